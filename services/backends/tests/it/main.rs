//! Integration tests of the shared backends against real services: PostgreSQL and moto.

mod queue_contract;
mod storage_contract;
