//! The command line: options named after RabbitMQ `PerfTest`'s where they mean the same, and
//! the checks clap cannot do by itself (the URIs).

use std::{ffi::OsString, fmt, time::Duration};

use clap::{ArgAction, CommandFactory, Parser, ValueEnum, error::ErrorKind};
use lepus::{ConnectionOptions, ExchangeKind, FieldTable, FieldValue, ShortStr};

use crate::message::HEADER_LEN;

/// Where `--uri` points when it is not given: the local broker as guest.
pub(crate) const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The largest body `-s` accepts: RabbitMQ's own default `max_message_size` (128 MiB).
const MAX_SIZE: u32 = 128 * 1024 * 1024;

/// Command-line options of one run.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lepus-perf",
    version,
    about = "Load-test RabbitMQ with lepus: producers publish timestamped messages, consumers \
             receive them, and every second a line reports the rates and the end-to-end latency.",
    long_about = None,
    // PerfTest's -h is the URI; help stays on --help.
    disable_help_flag = true,
    after_help = "Each producer and each consumer has a connection of its own (consumers of an \
                  --exclusive queue share the connection that declared it). Latency is measured \
                  from a send timestamp in the first bytes of each body, read by a consumer of \
                  the same run. Ctrl-C stops the run and prints the summary; a second Ctrl-C \
                  exits at once."
)]
// Independent command-line switches, not a state machine; and the field docs are the
// --help text, where markdown backticks would show as they are.
#[allow(clippy::struct_excessive_bools, clippy::doc_markdown)]
pub(crate) struct Args {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,

    /// Broker URI; repeat the option or separate URIs with commas (percent-encode a comma
    /// inside a URI as %2C). Every URI is checked before the run; the run uses the first
    /// one that accepts a connection, for every connection it opens. Failing over between
    /// the addresses during a run is not done yet: multi-address failover is being added
    /// to the client separately. Each attempt is bounded by the URI's connection_timeout
    /// (30 s unless the URI sets ?connection_timeout=MS).
    #[arg(
        short = 'h',
        long = "uri",
        visible_alias = "uris",
        visible_short_alias = 'H',
        value_name = "URI",
        value_delimiter = ',',
        default_value = DEFAULT_URI
    )]
    uris: Vec<String>,

    /// Number of producers, each on a connection of its own.
    #[arg(short = 'x', long, value_name = "N", default_value_t = 1)]
    pub(crate) producers: u32,

    /// Number of consumers, each on a connection of its own.
    #[arg(short = 'y', long, value_name = "N", default_value_t = 1)]
    pub(crate) consumers: u32,

    /// Message size in bytes, at least 12: the body starts with a 4-byte run tag and an
    /// 8-byte send timestamp, followed by zeros.
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(HEADER_LEN as i64..=i64::from(MAX_SIZE)))]
    pub(crate) size: u32,

    /// Rate limit of each producer in messages per second; 0 publishes as fast as the
    /// connection takes them.
    #[arg(short = 'r', long, value_name = "MSG_PER_S", default_value_t = 0)]
    pub(crate) rate: u32,

    /// Publisher confirms with at most this many unconfirmed messages per producer
    /// (PerfTest's "max unconfirmed publishes"); 0 publishes without confirms.
    #[arg(short = 'c', long = "confirm", value_name = "WINDOW", default_value_t = 0)]
    pub(crate) confirm: u32,

    /// Prefetch (basic.qos) of each consumer; 0 means no limit.
    #[arg(short = 'q', long = "qos", value_name = "PREFETCH", default_value_t = 0)]
    pub(crate) qos: u16,

    /// Consume without acknowledgements (the broker forgets a message once it sent it).
    #[arg(short = 'a', long)]
    pub(crate) autoack: bool,

    /// Run for this many seconds, then stop publishing and let the consumers take what
    /// was published. Without -z or -C the run goes on until Ctrl-C.
    #[arg(short = 'z', long = "time", value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) time: Option<u64>,

    /// Messages each producer publishes before it stops (with -z too: whichever comes first).
    #[arg(short = 'C', long = "pmessages", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) pmessages: Option<u64>,

    /// Queue to publish to and consume from; empty: a server-named queue, deleted at the end.
    #[arg(short = 'u', long = "queue", value_name = "NAME", default_value = "", value_parser = short_name)]
    pub(crate) queue: String,

    /// Declare the queue durable.
    #[arg(long)]
    pub(crate) durable: bool,

    /// Declare the queue exclusive to the connection that declares it; the consumers then
    /// share that connection, one channel each.
    #[arg(long)]
    pub(crate) exclusive: bool,

    /// Declare the queue auto-delete: the broker deletes it when its last consumer goes.
    #[arg(long = "auto-delete", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub(crate) auto_delete: bool,

    /// Queue arguments as KEY=VALUE pairs, comma separated or repeated, e.g.
    /// x-queue-type=quorum,x-max-length=10000. Integers are sent as signed 64-bit,
    /// true/false as booleans, anything else as a string.
    #[arg(long = "queue-args", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = queue_arg)]
    pub(crate) arguments: Vec<QueueArg>,

    /// Declare a quorum queue: x-queue-type=quorum, durable, not auto-delete. Needs -u:
    /// the broker names no quorum queue.
    #[arg(long = "quorum-queue", conflicts_with = "exclusive", requires = "queue")]
    pub(crate) quorum_queue: bool,

    /// Use the queue and exchange as they are, declaring nothing (the queue must exist; it
    /// is checked with a passive declare). Needs -u.
    #[arg(short = 'p', long, requires = "queue")]
    pub(crate) predeclared: bool,

    /// Exchange to publish to; empty is the default exchange, which routes on the queue's
    /// name (PerfTest declares one named "direct" instead). A named exchange is declared
    /// with --type (unless it is an amq.* one) and the queue is bound to it with the routing
    /// key.
    #[arg(short = 'e', long, value_name = "NAME", default_value = "", value_parser = short_name)]
    pub(crate) exchange: String,

    /// Type of the exchange declared for -e.
    #[arg(short = 't', long = "type", value_name = "TYPE", value_enum, default_value_t = ExchangeType::Direct)]
    pub(crate) exchange_type: ExchangeType,

    /// Routing key of every publish (and of the queue's binding to -e); default: the queue's name.
    #[arg(short = 'k', long = "routing-key", value_name = "KEY", value_parser = short_name)]
    pub(crate) routing_key: Option<String>,

    /// Message flags: persistent (delivery mode 2), mandatory (unroutable messages come
    /// back and are counted as returned). Repeat or separate with commas.
    #[arg(short = 'f', long = "flag", value_name = "FLAG", value_enum, value_delimiter = ',')]
    pub(crate) flags: Vec<Flag>,

    /// After publishing stops, how long to wait for outstanding confirms and for the
    /// consumers to receive every routed message, in seconds.
    #[arg(long = "drain-timeout", value_name = "SECONDS", default_value_t = 10)]
    pub(crate) drain_timeout: u64,

    /// Test ID: names the run's connections "lepus-perf ID producer 0", ... (as listed by
    /// rabbitmqctl list_connections) and is repeated in the summary.
    #[arg(short = 'd', long, value_name = "ID")]
    pub(crate) id: Option<String>,

    /// Print one JSON object per line: one a second, then the summary.
    #[arg(long)]
    pub(crate) json: bool,

    /// Let lepus recover lost connections (reconnect and re-declare) instead of ending the
    /// run with the error. Off by default: a throughput run should report a broker that
    /// dropped it, not measure across the gap.
    #[arg(long)]
    pub(crate) recover: bool,

    /// The parsed --uri values, in the order given.
    #[arg(skip)]
    pub(crate) brokers: Vec<Broker>,
}

/// An exchange type `-t` can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExchangeType {
    /// Routes on an exact routing-key match.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on `*` and `#` patterns.
    Topic,
    /// Routes on header values.
    Headers,
}

impl From<ExchangeType> for ExchangeKind {
    fn from(t: ExchangeType) -> Self {
        match t {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Headers => ExchangeKind::Headers,
        }
    }
}

/// A `-f` message flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Flag {
    /// Delivery mode 2: the broker writes the message to disk on a durable queue.
    Persistent,
    /// The broker returns the message if no queue is bound for it.
    Mandatory,
}

/// One `--queue-args` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueArg {
    /// The argument's name (checked to be at most 255 bytes).
    pub(crate) key: String,
    /// Its value, typed as described on `--queue-args`.
    pub(crate) value: FieldValue,
}

/// A broker address from `--uri`.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    /// What to connect with.
    pub(crate) options: ConnectionOptions,
}

impl fmt::Display for Broker {
    /// The URI form, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.options.fmt(f)
    }
}

impl Args {
    /// Parses a command line (the first item is the program name) and checks the URIs.
    /// The error prints like clap's own and exits with status 2 (0 for --help, --version).
    pub(crate) fn parse_from<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args = Args::try_parse_from(argv)?;
        args.brokers = parse_uris(&args.uris, args.recover)?;
        Ok(args)
    }

    /// Whether messages are published with the mandatory flag.
    pub(crate) fn mandatory(&self) -> bool {
        self.flags.contains(&Flag::Mandatory)
    }

    /// Whether messages are persistent.
    pub(crate) fn persistent(&self) -> bool {
        self.flags.contains(&Flag::Persistent)
    }

    /// The queue declared durable (`--durable`, or implied by `--quorum-queue`).
    pub(crate) fn queue_durable(&self) -> bool {
        self.durable || self.quorum_queue
    }

    /// The queue declared auto-delete (`--auto-delete`, never for `--quorum-queue`).
    pub(crate) fn queue_auto_delete(&self) -> bool {
        self.auto_delete && !self.quorum_queue
    }

    /// The `queue.declare` arguments from `--queue-args` and `--quorum-queue`.
    pub(crate) fn queue_arguments(&self) -> FieldTable {
        let mut table = FieldTable::new();
        if self.quorum_queue {
            // A literal key well under 255 bytes: insert cannot fail.
            let _ = table.insert("x-queue-type", "quorum");
        }
        for arg in &self.arguments {
            // Keys were checked by the parser; a later value replaces an earlier one.
            let _ = table.insert(arg.key.as_str(), arg.value.clone());
        }
        table
    }

    /// The name of the connection with `role` (e.g. "producer 0"), with the `--id`.
    pub(crate) fn connection_name(&self, role: &str) -> String {
        match &self.id {
            Some(id) => format!("lepus-perf {id} {role}"),
            None => format!("lepus-perf {role}"),
        }
    }

    /// How long the drain after publishing may take.
    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }
}

/// Parses every URI; the error names the URI by position, not by text, because the text
/// may carry a password.
fn parse_uris(uris: &[String], recover: bool) -> Result<Vec<Broker>, clap::Error> {
    let mut brokers = Vec::with_capacity(uris.len());
    for (i, uri) in uris.iter().enumerate() {
        let uri = uri.trim();
        if uri.is_empty() {
            return Err(Args::command().error(ErrorKind::InvalidValue, format!("--uri #{}: empty URI", i + 1)));
        }
        match ConnectionOptions::from_uri(uri) {
            Ok(options) => {
                let options = if recover { options } else { options.recovery(lepus::RecoveryOptions::disabled()) };
                brokers.push(Broker { options });
            }
            Err(e) => {
                return Err(Args::command().error(ErrorKind::InvalidValue, format!("--uri #{}: {e}", i + 1)));
            }
        }
    }
    Ok(brokers)
}

/// A name or key AMQP can carry: at most 255 bytes.
fn short_name(s: &str) -> Result<String, String> {
    ShortStr::try_from(s).map(|_| s.to_owned()).map_err(|_| format!("{} bytes: AMQP allows at most 255", s.len()))
}

/// `KEY=VALUE` from `--queue-args`.
fn queue_arg(s: &str) -> Result<QueueArg, String> {
    let (key, value) = s.split_once('=').ok_or_else(|| "expected KEY=VALUE".to_owned())?;
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key".to_owned());
    }
    if ShortStr::try_from(key).is_err() {
        return Err(format!("key of {} bytes: AMQP allows at most 255", key.len()));
    }
    let key = key.to_owned();
    let value = value.trim();
    let value = if let Ok(n) = value.parse::<i64>() {
        FieldValue::I64(n)
    } else if value == "true" || value == "false" {
        FieldValue::Bool(value == "true")
    } else {
        FieldValue::from(value)
    };
    Ok(QueueArg { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::parse_from(std::iter::once("lepus-perf").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_perftest() {
        let args = parse(&[]).expect("no arguments are valid");
        assert_eq!((args.producers, args.consumers, args.size, args.rate, args.confirm), (1, 1, 12, 0, 0));
        assert!(args.auto_delete && !args.durable && !args.exclusive && !args.json);
        assert_eq!(args.brokers.len(), 1);
        assert_eq!(args.brokers[0].options.get_host(), "127.0.0.1");
        assert_eq!(args.queue, "");
    }

    #[test]
    fn uris_repeat_and_split_on_commas() {
        let args = parse(&["-h", "amqp://a:5673,amqp://b", "--uri", "amqp://c", "-H", "amqp://d"]).expect("valid");
        let hosts: Vec<_> = args.brokers.iter().map(|b| b.options.get_host().to_owned()).collect();
        assert_eq!(hosts, ["a", "b", "c", "d"]);
        assert_eq!(args.brokers[0].options.get_port(), 5673);
    }

    #[test]
    fn a_bad_uri_is_named_by_position_without_its_text() {
        let err = parse(&["-h", "amqp://ok,http://user:secret@x"]).expect_err("http is not AMQP");
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        let text = err.to_string();
        assert!(text.contains("--uri #2"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn queue_args_are_typed() {
        let args = parse(&[
            "--queue-args",
            "x-queue-type=quorum,x-max-length=10",
            "--queue-args",
            "x-single-active-consumer=true",
        ])
        .expect("valid");
        let table = args.queue_arguments();
        assert_eq!(table.get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
        assert_eq!(table.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(table.get("x-single-active-consumer"), Some(&FieldValue::Bool(true)));
        assert!(parse(&["--queue-args", "novalue"]).is_err());
        assert!(parse(&["--queue-args", "=1"]).is_err());
    }

    #[test]
    fn quorum_queue_implies_durable_and_not_auto_delete() {
        assert_eq!(parse(&["--quorum-queue"]).expect_err("needs -u").kind(), ErrorKind::MissingRequiredArgument);
        let args = parse(&["--quorum-queue", "-u", "q"]).expect("valid");
        assert!(args.queue_durable() && !args.queue_auto_delete());
        assert_eq!(args.queue_arguments().get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
        assert_eq!(
            parse(&["--quorum-queue", "--exclusive", "-u", "q"]).expect_err("conflict").kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert_eq!(parse(&["-s", "11"]).expect_err("too small").kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["-x", "-1"]).expect_err("negative").kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["-z", "0"]).expect_err("zero time").kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["-u", &"q".repeat(256)]).expect_err("long name").kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["-p"]).expect_err("needs -u").kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn the_id_names_the_connections() {
        assert_eq!(parse(&[]).expect("valid").connection_name("producer 0"), "lepus-perf producer 0");
        let args = parse(&["-d", "nightly"]).expect("valid");
        assert_eq!(args.connection_name("consumer 1"), "lepus-perf nightly consumer 1");
    }

    #[test]
    fn flags_parse() {
        let args = parse(&["-f", "persistent,mandatory"]).expect("valid");
        assert!(args.persistent() && args.mandatory());
    }
}
