//! The declarative table behind every method struct.

/// Declares method argument structs: fields in wire order, each with its AMQP domain type
/// (octet, short, long, longlong, bit, shortstr, longstr, timestamp, table) and, optionally,
/// the specification's default value. Generates the struct, `Default`, the argument list the
/// spec-conformance test checks, and the readers and writers.
macro_rules! method_structs {
    ($(
        $(#[$doc:meta])*
        $name:ident {
            $( $(#[$fdoc:meta])* $field:ident: $ty:ty = $wire:ident $(($default:expr))? ),* $(,)?
        }
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: $ty, )*
        }

        impl $name {
            /// Argument names (with `_` for the specification's `-`) and domain types, in wire order.
            pub const ARGUMENTS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($wire)),)*];

            #[allow(unused_variables)]
            pub(crate) fn read(r: &mut $crate::wire::Reader<'_>) -> Result<Self, $crate::DecodeError> {
                // Struct expressions evaluate their fields in the order written: wire order.
                Ok($name { $($field: r.$wire()?.into(),)* })
            }

            #[allow(unused_variables)]
            pub(crate) fn write(&self, w: &mut $crate::wire::Writer<'_>) -> Result<(), $crate::EncodeError> {
                $( method_structs!(@write w, $wire, self.$field); )*
                Ok(())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: method_structs!(@default $($default)?),)* }
            }
        }
    )*};
    (@write $w:ident, shortstr, $v:expr) => { $w.shortstr(&$v)? };
    (@write $w:ident, longstr, $v:expr) => { $w.longstr(&$v)? };
    (@write $w:ident, table, $v:expr) => { $w.table(&$v)? };
    (@write $w:ident, $wire:ident, $v:expr) => { $w.$wire($v.into())? };
    (@default) => { Default::default() };
    (@default $e:expr) => { $e };
}

pub(crate) use method_structs;
