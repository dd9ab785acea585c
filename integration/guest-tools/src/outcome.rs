//! What a client mode hands back to `main`: its result object and whether it succeeded.

use serde_json::Value;

/// A finished command.
#[derive(Debug)]
pub struct Outcome {
    /// The `SBRESULT` object.
    pub value: Value,
    /// Exit status 0 if true, 1 otherwise.
    pub ok: bool,
}
