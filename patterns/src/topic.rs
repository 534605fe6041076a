//! Topic routing: events published with dotted routing keys (`order.europe.placed`) reach
//! the queues whose binding patterns match them.
//!
//! A pattern is a routing key whose words may be `*` (exactly one word) or `#` (zero or
//! more words). [`topic_matches`] is RabbitMQ's rule as a pure function, checked against
//! the broker's own routing on generated keys and patterns (`tests/topic.rs`):
//!
//! - keys and patterns are split on every `.`; words may be empty (`a..b` has three words,
//!   `a.` two: `a` and the empty word), and the empty string has no words at all;
//! - `*` matches any one word, the empty word included;
//! - `#` matches any run of words, none included; `#.#` means the same as `#`;
//! - other words match only themselves: `*` and `#` are wildcards only as whole words
//!   (`a*` is an ordinary word), and matching is case-sensitive.
//!
//! ```
//! use lepus_patterns::topic::topic_matches;
//!
//! assert!(topic_matches("order.#", "order.europe.placed"));
//! assert!(topic_matches("order.europe.*", "order.europe.placed"));
//! assert!(topic_matches("*.*.placed", "order.europe.placed"));
//! assert!(!topic_matches("order.*", "order.europe.placed"));
//! assert!(topic_matches("a.#.b", "a.b"));
//! assert!(topic_matches("#", ""));
//! assert!(!topic_matches("*", ""));
//! assert!(topic_matches("a.*", "a."));
//! ```

use bytes::Bytes;
use lepus::{Confirmation, Connection, Error, ExchangeKind, FieldTable, PublishOptions};

use crate::pubsub::{ExchangePublisher, Subscription, declare_exchange, delete_exchange};
use crate::work_queue::on_throwaway_channel;

/// The words of a routing key or pattern as RabbitMQ splits them: on every `.`, keeping
/// empty words; the empty string has none.
fn words(s: &str) -> impl Iterator<Item = &str> {
    let mut split = s.split('.');
    if s.is_empty() {
        // `"".split('.')` yields one empty word; RabbitMQ sees none.
        split.next();
    }
    split
}

/// Whether a message with `routing_key` reaches a queue bound to a topic exchange with
/// `pattern`, by RabbitMQ's rules (see the [module docs](self)).
///
/// Linear in the product of the word counts, whatever the pattern (no backtracking).
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = words(pattern).collect();
    // live[i]: the first i pattern words can match the key words consumed so far.
    let mut live = vec![false; pattern.len() + 1];
    let mut next = vec![false; pattern.len() + 1];
    if let Some(first) = live.first_mut() {
        *first = true;
    }
    close_over_hashes(&pattern, &mut live);
    for word in words(routing_key) {
        next.fill(false);
        for (i, p) in pattern.iter().enumerate() {
            if !live.get(i).copied().unwrap_or(false) {
                continue;
            }
            let target = match *p {
                // `#` may swallow this word and stay.
                "#" => i,
                "*" => i + 1,
                literal if literal == word => i + 1,
                _ => continue,
            };
            if let Some(n) = next.get_mut(target) {
                *n = true;
            }
        }
        std::mem::swap(&mut live, &mut next);
        close_over_hashes(&pattern, &mut live);
        if !live.contains(&true) {
            return false;
        }
    }
    live.last().copied().unwrap_or(false)
}

/// A `#` may match no word: being before it means being after it too.
fn close_over_hashes(pattern: &[&str], live: &mut [bool]) {
    for (i, p) in pattern.iter().enumerate() {
        if *p == "#"
            && live.get(i).copied().unwrap_or(false)
            && let Some(after) = live.get_mut(i + 1)
        {
            *after = true;
        }
    }
}

/// A durable topic exchange: publish with routing keys, subscribe queues with patterns.
///
/// ```no_run
/// use lepus::Connection;
/// use lepus_patterns::topic::TopicExchange;
/// use lepus_patterns::work_queue::WorkerOptions;
///
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let events = TopicExchange::declare(&conn, "events.topic").await?;
/// let europe = events.subscribe("europe-orders", &["order.europe.*"]).await?;
/// let worker = europe
///     .worker(WorkerOptions::default(), |job| async move {
///         println!("{}: {}", job.routing_key_str(), job.body_str().unwrap_or("?"));
///     })
///     .await?;
/// events.publish("order.europe.placed", &b"{}"[..]).await?; // reaches europe-orders
/// events.publish("order.asia.placed", &b"{}"[..]).await?; // does not
/// worker.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TopicExchange {
    publisher: ExchangePublisher,
}

impl TopicExchange {
    /// Declares the durable topic exchange `name` (idempotent; a 406 if an exchange of that
    /// name exists with another type).
    pub async fn declare(conn: &Connection, name: &str) -> Result<TopicExchange, Error> {
        declare_exchange(conn, name, ExchangeKind::Topic).await?;
        Ok(TopicExchange { publisher: ExchangePublisher::new(conn, name) })
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.publisher.name
    }

    /// Publishes a persistent event with `routing_key` and waits for the broker's verdict
    /// (an event no pattern matches is acked and dropped).
    pub async fn publish(&self, routing_key: &str, body: impl Into<Bytes>) -> Result<Confirmation, Error> {
        self.publisher.publish(routing_key, body.into(), PublishOptions::default()).await
    }

    /// Publishes with properties (persistent unless `delivery_mode` is set) and options:
    /// with `mandatory`, an event no pattern matches comes back as
    /// [`Confirmation::Returned`].
    pub async fn publish_with(
        &self,
        routing_key: &str,
        body: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<Confirmation, Error> {
        self.publisher.publish(routing_key, body.into(), options).await
    }

    /// Declares the durable queue `queue` and binds it with each pattern: it receives every
    /// event whose routing key matches any of them (once, even if several match).
    pub async fn subscribe(&self, queue: &str, patterns: &[&str]) -> Result<Subscription, Error> {
        let bindings = patterns.iter().map(|p| ((*p).to_owned(), FieldTable::new())).collect();
        self.publisher.subscribe(queue, bindings).await
    }

    /// Adds a pattern to an existing queue.
    pub async fn bind(&self, queue: &str, pattern: &str) -> Result<(), Error> {
        let (queue, exchange, pattern) = (queue.to_owned(), self.name().to_owned(), pattern.to_owned());
        on_throwaway_channel(self.publisher.connection(), |channel| async move {
            channel.queue_bind(&queue, &exchange, &pattern, FieldTable::new()).await
        })
        .await
    }

    /// Removes a pattern from a queue.
    pub async fn unbind(&self, queue: &str, pattern: &str) -> Result<(), Error> {
        let (queue, exchange, pattern) = (queue.to_owned(), self.name().to_owned(), pattern.to_owned());
        on_throwaway_channel(self.publisher.connection(), |channel| async move {
            channel.queue_unbind(&queue, &exchange, &pattern, FieldTable::new()).await
        })
        .await
    }

    /// Deletes the exchange (its queues stay, unbound).
    pub async fn delete(&self) -> Result<(), Error> {
        delete_exchange(self.publisher.connection(), self.name()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_like_rabbitmq() {
        assert_eq!(words("").count(), 0);
        assert_eq!(words(".").collect::<Vec<_>>(), ["", ""]);
        assert_eq!(words("a.").collect::<Vec<_>>(), ["a", ""]);
        assert_eq!(words("a..b").collect::<Vec<_>>(), ["a", "", "b"]);
    }

    #[test]
    fn the_rules() {
        let yes = [
            ("", ""),
            ("#", ""),
            ("#", "a.b.c"),
            ("#.#", ""),
            ("#.#", "a"),
            ("a.#", "a"),
            ("#.a", "a"),
            ("a.#.b", "a.b"),
            ("a.#.b", "a.x.y.b"),
            ("*", "x"),
            ("a.*", "a."),
            ("*.*", "."),
            ("*", "a"),
            ("#.*", "a.b"),
            ("*.#.*", "a.b"),
            ("a*", "a*"),
        ];
        for (p, k) in yes {
            assert!(topic_matches(p, k), "{p:?} should match {k:?}");
        }
        let no = [
            ("", "a"),
            ("*", ""),
            ("a", ""),
            ("a", "A"),
            ("a.*", "a"),
            ("a.*", "a.b.c"),
            ("*.*", "a"),
            ("#.*", ""),
            ("*.#.*", "a"),
            ("a*", "ab"),
            ("a.#.b", "a.b.c"),
            ("a.", "a"),
        ];
        for (p, k) in no {
            assert!(!topic_matches(p, k), "{p:?} should not match {k:?}");
        }
    }

    #[test]
    fn many_hashes_stay_linear() {
        let pattern = vec!["#"; 200].join(".") + ".z";
        let key = vec!["a"; 200].join(".");
        assert!(!topic_matches(&pattern, &key));
        assert!(topic_matches(&pattern, &(key + ".z")));
    }
}
