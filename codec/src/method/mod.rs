//! Every method of AMQP 0-9-1 with RabbitMQ's extensions, one module per class, and the
//! [`Method`] enum that a method frame decodes into.
//!
//! The table at the bottom of this file is the single place where class and method ids are
//! assigned; `tests/spec_conformance.rs` checks it against RabbitMQ's machine-readable spec.

mod macros;

pub mod access;
pub mod basic;
pub mod channel;
pub mod confirm;
pub mod connection;
pub mod exchange;
pub mod queue;
pub mod tx;

use crate::{
    DecodeError, EncodeError,
    wire::{Reader, Writer},
};

/// A short-string literal for spec defaults; every literal used is under 255 bytes.
pub(crate) const fn lit(s: &'static str) -> crate::ShortStr {
    crate::ShortStr::from_static_unchecked(s)
}

macro_rules! methods {
    ($( $variant:ident = ($class:literal, $method:literal, $spec:literal) $module:ident :: $ty:ident $(, content = $content:literal)?; )*) => {
        /// A decoded method with its arguments.
        ///
        /// ```
        /// use lepus_codec::{Method, method::basic};
        /// let m = Method::from(basic::Ack { delivery_tag: 7, multiple: true });
        /// assert_eq!((m.class_id(), m.method_id(), m.name()), (60, 80, "basic.ack"));
        /// ```
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Method {
            $(
                #[doc = concat!("`", $spec, "` (", $class, ", ", $method, ")")]
                $variant($module::$ty),
            )*
        }

        $(
            impl $module::$ty {
                /// The class id.
                pub const CLASS_ID: u16 = $class;
                /// The method id within its class.
                pub const METHOD_ID: u16 = $method;
                /// The specification's name, `class.method`.
                pub const NAME: &'static str = $spec;
                /// `(class id, method id)`, as a reply is matched against it.
                pub const ID: (u16, u16) = ($class, $method);
            }

            impl From<$module::$ty> for Method {
                fn from(m: $module::$ty) -> Method {
                    Method::$variant(m)
                }
            }
        )*

        impl Method {
            /// `(class id, method id, name, argument names and types)` of every method this
            /// crate knows, in table order.
            pub const ALL: &'static [(u16, u16, &'static str, &'static [(&'static str, &'static str)])] = &[
                $(($class, $method, $spec, $module::$ty::ARGUMENTS),)*
            ];

            /// The class id.
            pub const fn class_id(&self) -> u16 {
                match self { $(Method::$variant(_) => $class,)* }
            }

            /// The method id within its class.
            pub const fn method_id(&self) -> u16 {
                match self { $(Method::$variant(_) => $method,)* }
            }

            /// `(class id, method id)`: compare with a method type's `ID` constant.
            pub const fn id(&self) -> (u16, u16) {
                (self.class_id(), self.method_id())
            }

            /// The specification's name, `class.method`.
            pub const fn name(&self) -> &'static str {
                match self { $(Method::$variant(_) => $spec,)* }
            }

            /// True for the methods followed by a content header and body
            /// (`basic.publish`, `basic.return`, `basic.deliver`, `basic.get-ok`).
            pub const fn has_content(&self) -> bool {
                match self { $(Method::$variant(_) => false $(|| $content)?,)* }
            }

            /// Decodes a method frame payload: class id, method id, arguments.
            pub(crate) fn read(r: &mut Reader<'_>) -> Result<Method, DecodeError> {
                let class_id = r.short()?;
                let method_id = r.short()?;
                let method = match (class_id, method_id) {
                    $(($class, $method) => Method::$variant($module::$ty::read(r)?),)*
                    _ => return Err(DecodeError::UnknownMethod { class_id, method_id }),
                };
                // The name is looked up only for the error.
                if !r.is_empty() {
                    r.finish(spec_of(class_id, method_id))?;
                }
                Ok(method)
            }

            /// Encodes a method frame payload.
            pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                w.short(self.class_id())?;
                w.short(self.method_id())?;
                match self { $(Method::$variant(m) => m.write(w)?,)* }
                w.flush_bits();
                Ok(())
            }
        }

        /// The name of a method, for error messages.
        fn spec_of(class_id: u16, method_id: u16) -> &'static str {
            match (class_id, method_id) {
                $(($class, $method) => $spec,)*
                _ => "method",
            }
        }
    };
}

methods! {
    ConnectionStart = (10, 10, "connection.start") connection::Start;
    ConnectionStartOk = (10, 11, "connection.start-ok") connection::StartOk;
    ConnectionSecure = (10, 20, "connection.secure") connection::Secure;
    ConnectionSecureOk = (10, 21, "connection.secure-ok") connection::SecureOk;
    ConnectionTune = (10, 30, "connection.tune") connection::Tune;
    ConnectionTuneOk = (10, 31, "connection.tune-ok") connection::TuneOk;
    ConnectionOpen = (10, 40, "connection.open") connection::Open;
    ConnectionOpenOk = (10, 41, "connection.open-ok") connection::OpenOk;
    ConnectionClose = (10, 50, "connection.close") connection::Close;
    ConnectionCloseOk = (10, 51, "connection.close-ok") connection::CloseOk;
    ConnectionBlocked = (10, 60, "connection.blocked") connection::Blocked;
    ConnectionUnblocked = (10, 61, "connection.unblocked") connection::Unblocked;
    ConnectionUpdateSecret = (10, 70, "connection.update-secret") connection::UpdateSecret;
    ConnectionUpdateSecretOk = (10, 71, "connection.update-secret-ok") connection::UpdateSecretOk;
    ChannelOpen = (20, 10, "channel.open") channel::Open;
    ChannelOpenOk = (20, 11, "channel.open-ok") channel::OpenOk;
    ChannelFlow = (20, 20, "channel.flow") channel::Flow;
    ChannelFlowOk = (20, 21, "channel.flow-ok") channel::FlowOk;
    ChannelClose = (20, 40, "channel.close") channel::Close;
    ChannelCloseOk = (20, 41, "channel.close-ok") channel::CloseOk;
    AccessRequest = (30, 10, "access.request") access::Request;
    AccessRequestOk = (30, 11, "access.request-ok") access::RequestOk;
    ExchangeDeclare = (40, 10, "exchange.declare") exchange::Declare;
    ExchangeDeclareOk = (40, 11, "exchange.declare-ok") exchange::DeclareOk;
    ExchangeDelete = (40, 20, "exchange.delete") exchange::Delete;
    ExchangeDeleteOk = (40, 21, "exchange.delete-ok") exchange::DeleteOk;
    ExchangeBind = (40, 30, "exchange.bind") exchange::Bind;
    ExchangeBindOk = (40, 31, "exchange.bind-ok") exchange::BindOk;
    ExchangeUnbind = (40, 40, "exchange.unbind") exchange::Unbind;
    // RabbitMQ numbers unbind-ok 51, not 41.
    ExchangeUnbindOk = (40, 51, "exchange.unbind-ok") exchange::UnbindOk;
    QueueDeclare = (50, 10, "queue.declare") queue::Declare;
    QueueDeclareOk = (50, 11, "queue.declare-ok") queue::DeclareOk;
    QueueBind = (50, 20, "queue.bind") queue::Bind;
    QueueBindOk = (50, 21, "queue.bind-ok") queue::BindOk;
    QueuePurge = (50, 30, "queue.purge") queue::Purge;
    QueuePurgeOk = (50, 31, "queue.purge-ok") queue::PurgeOk;
    QueueDelete = (50, 40, "queue.delete") queue::Delete;
    QueueDeleteOk = (50, 41, "queue.delete-ok") queue::DeleteOk;
    QueueUnbind = (50, 50, "queue.unbind") queue::Unbind;
    QueueUnbindOk = (50, 51, "queue.unbind-ok") queue::UnbindOk;
    BasicQos = (60, 10, "basic.qos") basic::Qos;
    BasicQosOk = (60, 11, "basic.qos-ok") basic::QosOk;
    BasicConsume = (60, 20, "basic.consume") basic::Consume;
    BasicConsumeOk = (60, 21, "basic.consume-ok") basic::ConsumeOk;
    BasicCancel = (60, 30, "basic.cancel") basic::Cancel;
    BasicCancelOk = (60, 31, "basic.cancel-ok") basic::CancelOk;
    BasicPublish = (60, 40, "basic.publish") basic::Publish, content = true;
    BasicReturn = (60, 50, "basic.return") basic::Return, content = true;
    BasicDeliver = (60, 60, "basic.deliver") basic::Deliver, content = true;
    BasicGet = (60, 70, "basic.get") basic::Get;
    BasicGetOk = (60, 71, "basic.get-ok") basic::GetOk, content = true;
    BasicGetEmpty = (60, 72, "basic.get-empty") basic::GetEmpty;
    BasicAck = (60, 80, "basic.ack") basic::Ack;
    BasicReject = (60, 90, "basic.reject") basic::Reject;
    BasicRecoverAsync = (60, 100, "basic.recover-async") basic::RecoverAsync;
    BasicRecover = (60, 110, "basic.recover") basic::Recover;
    BasicRecoverOk = (60, 111, "basic.recover-ok") basic::RecoverOk;
    BasicNack = (60, 120, "basic.nack") basic::Nack;
    TxSelect = (90, 10, "tx.select") tx::Select;
    TxSelectOk = (90, 11, "tx.select-ok") tx::SelectOk;
    TxCommit = (90, 20, "tx.commit") tx::Commit;
    TxCommitOk = (90, 21, "tx.commit-ok") tx::CommitOk;
    TxRollback = (90, 30, "tx.rollback") tx::Rollback;
    TxRollbackOk = (90, 31, "tx.rollback-ok") tx::RollbackOk;
    ConfirmSelect = (85, 10, "confirm.select") confirm::Select;
    ConfirmSelectOk = (85, 11, "confirm.select-ok") confirm::SelectOk;
}
