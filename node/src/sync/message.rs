//! STUB: the helper building the sync engine replaces this file. Public API is fixed below.
#![allow(missing_docs, unused_variables)]

use fleetmesh_model::SignedChange;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("invalid sync message: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Message {
    Changes(Vec<SignedChange>),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        todo!()
    }
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Message, MessageError> {
        todo!()
    }
    pub fn encoded_len(&self) -> usize {
        todo!()
    }
}
