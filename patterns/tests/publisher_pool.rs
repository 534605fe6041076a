//! The publisher pool against the real RabbitMQ: many tasks publishing with confirms
//! through a few channels, and a channel broken mid-way (a publish to a missing exchange,
//! 404) replaced for later publishes while each publish keeps its own outcome.

use std::time::Duration;

use lepus::{Confirmation, Connection, Error, PublishOptions, ReplyCode};

mod common;
use common::{Cleanup, Within, connect, delete_queue, unique};
use lepus_patterns::publisher_pool::{PublisherPool, PublisherPoolOptions};

/// Bound for all of a test's publishes together (3,200 confirmed publishes).
const ALL_PUBLISHES: Duration = Duration::from_secs(60);

/// Declares `queue`, and returns a guard that deletes it when the test ends.
async fn declare_queue(conn: &Connection, queue: &str) -> Cleanup {
    let declaring = async {
        let ch = conn.open_channel().await.unwrap();
        ch.queue_declare(queue, Default::default(), Default::default()).await.unwrap();
        ch.close().await.unwrap();
    };
    declaring.within("declaring the queue").await;
    Cleanup::queues(vec![queue.to_owned()])
}

async fn pool(conn: &Connection, size: usize) -> PublisherPool {
    let options = PublisherPoolOptions { size, ..Default::default() };
    PublisherPool::new(conn, options).within("opening the pool").await.unwrap()
}

fn is_not_found(result: &Result<Confirmation, Error>) -> bool {
    matches!(result, Err(e @ Error::ChannelClosed(_)) if e.reply_code() == Some(ReplyCode::NOT_FOUND))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_publish_two_hundred_each_through_four_channels_all_acked() {
    let conn = connect().await;
    let queue = unique("all-acked");
    let _cleanup = declare_queue(&conn, &queue).await;
    let pool = pool(&conn, 4).await;
    assert_eq!(pool.size(), 4);

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (pool, queue) = (pool.clone(), queue.clone());
        tasks.spawn(async move {
            let mut acked = 0;
            for i in 0..200 {
                let outcome =
                    pool.publish("", &queue, format!("{t}/{i}"), PublishOptions::default()).within("publishing").await;
                assert_eq!(outcome.unwrap(), Confirmation::Ack);
                acked += 1;
            }
            acked
        });
    }
    let mut acked = 0;
    while let Some(done) = tasks.join_next().within_for(ALL_PUBLISHES, "the publishing tasks").await {
        acked += done.unwrap();
    }
    assert_eq!(acked, 3200);
    assert_eq!(pool.replaced_channels(), 0);
    pool.close().within("closing the pool").await;
    assert_eq!(delete_queue(&conn, &queue).await, 3200, "every acked message is in the queue");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_broken_mid_way_fails_its_own_publishes_and_is_replaced_for_later_ones() {
    let conn = connect().await;
    let queue = unique("broken");
    let missing = unique("no-such-exchange");
    let _cleanup = declare_queue(&conn, &queue).await;
    let pool = pool(&conn, 4).await;

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (pool, queue, missing) = (pool.clone(), queue.clone(), missing.clone());
        tasks.spawn(async move {
            let (mut acked, mut failed) = (0u32, 0u32);
            for i in 0..200 {
                if t == 0 && i == 100 {
                    // Break a channel, with publishes queued right behind on the pool.
                    let bad = pool.start_publish(&missing, "x", "lost", PublishOptions::default());
                    let bad = bad.within("publishing").await.unwrap();
                    let mut followers = Vec::new();
                    for f in 0..8 {
                        let body = format!("follower {f}");
                        let follower = pool.start_publish("", &queue, body, PublishOptions::default());
                        followers.push(follower.within("publishing").await.unwrap());
                    }
                    let bad = bad.within("the broken publish's outcome").await;
                    assert!(is_not_found(&bad), "the breaking publish gets the 404: {bad:?}");
                    for follower in followers {
                        let outcome = follower.within("a follower's outcome").await;
                        match outcome {
                            Ok(Confirmation::Ack) => acked += 1,
                            ref o if is_not_found(o) => failed += 1,
                            o => panic!("unexpected outcome {o:?}"),
                        }
                    }
                }
                let outcome =
                    pool.publish("", &queue, format!("{t}/{i}"), PublishOptions::default()).within("publishing").await;
                match outcome {
                    Ok(Confirmation::Ack) => acked += 1,
                    // In flight on the broken channel when it closed.
                    ref o if is_not_found(o) => failed += 1,
                    o => panic!("unexpected outcome {o:?}"),
                }
            }
            (acked, failed)
        });
    }
    let (mut acked, mut failed) = (0, 0);
    while let Some(done) = tasks.join_next().within_for(ALL_PUBLISHES, "the publishing tasks").await {
        let (a, f) = done.unwrap();
        acked += a;
        failed += f;
    }
    assert_eq!(acked + failed, 3200 + 8);
    assert!(failed <= 16 + 8, "only publishes in flight on the broken channel fail ({failed})");
    assert_eq!(pool.replaced_channels(), 1, "one channel broke, one replacement");

    // Later publishes all succeed, the replacement included.
    for i in 0..40 {
        let outcome =
            pool.publish("", &queue, format!("after {i}"), PublishOptions::default()).within("publishing").await;
        assert_eq!(outcome.unwrap(), Confirmation::Ack);
    }
    pool.close().within("closing the pool").await;
    let held = delete_queue(&conn, &queue).await;
    // A failed publish may still have reached the queue (its confirm was lost with the
    // channel), an acked one always did.
    assert!(held >= acked + 40 && held <= acked + failed + 40, "held {held}, acked {acked}, failed {failed}");
    println!("acked {acked}, failed with the broken channel {failed}");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_single_channel_the_publishes_behind_the_breaking_one_fail_and_the_next_ones_succeed() {
    let conn = connect().await;
    let queue = unique("single");
    let _cleanup = declare_queue(&conn, &queue).await;
    let pool = pool(&conn, 1).await;
    let before = pool.publish("", &queue, "before", PublishOptions::default()).within("publishing").await;
    assert_eq!(before.unwrap(), Confirmation::Ack);

    let missing = unique("missing");
    let bad = pool.start_publish(&missing, "x", "lost", PublishOptions::default());
    let bad = bad.within("publishing").await.unwrap();
    let mut behind = Vec::new();
    for i in 0..10 {
        let publish = pool.start_publish("", &queue, format!("behind {i}"), PublishOptions::default());
        behind.push(publish.within("publishing").await.unwrap());
    }
    assert!(is_not_found(&bad.within("the broken publish's outcome").await));
    let mut failed = 0;
    for confirm in behind {
        let outcome = confirm.within("an outcome").await;
        if is_not_found(&outcome) {
            failed += 1;
        } else {
            // Only possible if the close overtook the publish, which then went to the
            // replacement.
            assert_eq!(outcome.unwrap(), Confirmation::Ack);
        }
    }
    assert!(failed >= 1, "publishes in flight on the broken channel get its error");

    for i in 0..10 {
        let outcome =
            pool.publish("", &queue, format!("after {i}"), PublishOptions::default()).within("publishing").await;
        assert_eq!(outcome.unwrap(), Confirmation::Ack);
    }
    assert_eq!(pool.replaced_channels(), 1);
    pool.close().within("closing the pool").await;
    let held = delete_queue(&conn, &queue).await;
    assert!((11..=21).contains(&held), "held {held}");
    conn.close().within("closing").await.unwrap();
}
