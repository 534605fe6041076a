//! The queue's wake rules, deterministically: which push or wait wakes the driver, and
//! that order, closing and the last sender's drop hold.

use std::{
    collections::VecDeque,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use lepus_codec::{Method, method::basic};

use super::{CommandQueue, Wake};
use crate::{command::Command, proto::ChannelKey};

fn ack(tag: u64) -> Command {
    let key = ChannelKey { id: 1, epoch: 1 };
    Command::Settle { key, method: Method::BasicAck(basic::Ack { delivery_tag: tag, multiple: false }) }
}

fn tag(cmd: &Command) -> u64 {
    match cmd {
        Command::Settle { method: Method::BasicAck(a), .. } => a.delivery_tag,
        _ => panic!("not an ack"),
    }
}

fn push(q: &CommandQueue, cmd: Command, wake: Wake) {
    assert!(q.push(cmd, wake).is_ok(), "the queue is open");
}

/// Whether the driver has a wake waiting for it (takes it).
fn woken(q: &CommandQueue) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let notified = pin!(q.wake.notified());
    notified.poll(&mut cx) == Poll::Ready(())
}

fn take(q: &CommandQueue) -> Vec<u64> {
    let mut into = VecDeque::new();
    q.take(&mut into);
    into.iter().map(tag).collect()
}

#[test]
fn a_command_wakes_the_driver_once_until_it_takes_the_queue() {
    let q = CommandQueue::new();
    push(&q, ack(1), Wake::Now);
    push(&q, ack(2), Wake::Now);
    assert!(woken(&q));
    assert!(!woken(&q), "one wake for both");
    assert_eq!(take(&q), [1, 2]);
    push(&q, ack(3), Wake::Now);
    assert!(woken(&q), "after a take, the next command wakes again");
}

#[test]
fn deferred_commands_wake_a_driver_that_has_not_armed() {
    let q = CommandQueue::new();
    push(&q, ack(1), Wake::Settlement);
    assert!(woken(&q));
    take(&q);
    push(&q, ack(2), Wake::Publish);
    assert!(woken(&q));
}

#[test]
fn plain_publishes_wait_only_for_a_driver_armed_for_a_stream() {
    let q = CommandQueue::new();
    assert!(q.arm(false));
    push(&q, ack(1), Wake::Stream);
    assert!(woken(&q), "armed for deliveries or confirms, a plain publish still wakes it");
    take(&q);
    assert!(q.arm(true));
    push(&q, ack(2), Wake::Stream);
    push(&q, ack(3), Wake::Publish);
    assert!(!woken(&q), "armed for a stream, neither kind of publish wakes it");
    assert_eq!(take(&q), [2, 3]);
    push(&q, ack(4), Wake::Stream);
    assert!(woken(&q), "taking disarms");
}

#[test]
fn an_armed_driver_is_not_woken_for_deferred_commands_but_is_for_others() {
    let q = CommandQueue::new();
    assert!(q.arm(false));
    push(&q, ack(1), Wake::Settlement);
    push(&q, ack(2), Wake::Publish);
    assert!(!woken(&q));
    push(&q, ack(3), Wake::Now);
    assert!(woken(&q));
    assert_eq!(take(&q), [1, 2, 3], "one queue, in order");
    // Taking disarms.
    push(&q, ack(4), Wake::Publish);
    assert!(woken(&q));
}

#[test]
fn the_driver_does_not_arm_over_queued_commands() {
    let q = CommandQueue::new();
    push(&q, ack(1), Wake::Now);
    assert!(woken(&q));
    assert!(!q.arm(false));
    assert!(!woken(&q), "the push's wake was already given");
}

#[test]
fn a_driver_that_parks_over_unrung_commands_is_woken_for_them() {
    let q = CommandQueue::new();
    assert!(q.arm(false));
    push(&q, ack(1), Wake::Settlement);
    assert!(!woken(&q));
    // The driver's turn could not take the queue (its output was full), and it parks again.
    assert!(!q.arm(false));
    assert!(woken(&q));
    push(&q, ack(2), Wake::Settlement);
    assert!(!woken(&q), "one wake until the driver takes the queue");
    assert_eq!(take(&q), [1, 2]);
}

#[test]
fn an_armed_queue_wakes_the_driver_past_its_bound() {
    let q = CommandQueue::new();
    assert!(q.arm(false));
    for i in 0..super::WAKE_AT as u64 - 1 {
        push(&q, ack(i), Wake::Settlement);
    }
    assert!(!woken(&q));
    push(&q, ack(0), Wake::Settlement);
    assert!(woken(&q));
}

#[test]
fn a_waiting_publisher_rings_once_its_deferred_publishes_are_half_the_awaited_confirms() {
    let q = CommandQueue::new();
    for _ in 0..4 {
        q.confirm_awaited();
    }
    assert!(q.arm(false));
    push(&q, ack(1), Wake::Publish);
    q.publisher_waits();
    assert!(!woken(&q), "1 deferred of 4 awaited: the broker's acks wake the driver");
    push(&q, ack(2), Wake::Publish);
    q.publisher_waits();
    assert!(woken(&q), "2 deferred of 4 awaited");
    for _ in 0..4 {
        q.confirms_settled(1);
    }
    assert!(!q.confirms_awaited());
}

#[test]
fn a_waiting_consumer_rings_for_deferred_publishes_and_for_half_its_prefetch_of_acks() {
    let q = CommandQueue::new();
    assert!(q.arm(false));
    push(&q, ack(1), Wake::Settlement);
    q.consumer_waits(4);
    assert!(!woken(&q), "1 ack of prefetch 4");
    push(&q, ack(2), Wake::Settlement);
    q.consumer_waits(4);
    assert!(woken(&q), "2 acks of prefetch 4");
    take(&q);
    assert!(q.arm(false));
    push(&q, ack(3), Wake::Publish);
    q.consumer_waits(100);
    assert!(woken(&q), "a deferred publish");
}

#[test]
fn a_publisher_waiting_for_budget_rings_for_anything_deferred() {
    let q = CommandQueue::new();
    assert!(q.arm(false));
    q.budget_waits();
    assert!(!woken(&q), "nothing queued");
    push(&q, ack(1), Wake::Settlement);
    q.budget_waits();
    assert!(woken(&q));
}

#[test]
fn a_closed_queue_refuses_commands_and_hands_back_the_queued_ones() {
    let q = CommandQueue::new();
    push(&q, ack(1), Wake::Now);
    let left = q.close();
    assert_eq!(left.iter().map(tag).collect::<Vec<_>>(), [1]);
    assert_eq!(q.push(ack(2), Wake::Now), Err(super::Closed));
    assert!(q.close().is_empty(), "the refused command was not queued");
}

#[test]
fn the_last_sender_dropped_wakes_the_driver_after_its_commands() {
    let q = CommandQueue::new();
    q.sender_added();
    q.sender_added();
    q.sender_dropped();
    let mut into = VecDeque::new();
    assert!(!q.take(&mut into).orphaned);
    assert!(!woken(&q));
    push(&q, ack(1), Wake::Settlement);
    q.sender_dropped();
    assert!(woken(&q));
    let taken = q.take(&mut into);
    assert!(taken.orphaned);
    assert_eq!(into.iter().map(tag).collect::<Vec<_>>(), [1]);
}
