//! Sequences of updates against one document, as a room sees them: each
//! frame (the input split at 0xfe bytes) goes through the door's checks
//! against what the document holds; what is accepted is applied to one yrs
//! document in this process, as the document engine does; what is held is
//! retried after each accepted one. yrs must apply every accepted update,
//! and nothing may crash: a crash here is an update sequence the door lets
//! through to yrs that it should not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use y_redis_protocol::doc_state::DocState;
use y_redis_protocol::update::{judge, Verdict};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

/// Checks `update` and applies it if accepted; answers whether it was held.
fn offer(doc: &yrs::Doc, known: &mut DocState, update: &[u8]) -> Option<bool> {
    match judge(update, known) {
        Ok(Verdict::Accept(effects)) => {
            known.apply(&effects);
            let decoded = yrs::Update::decode_v1(update).expect("an accepted update decodes in yrs");
            doc.transact_mut()
                .apply_update(decoded)
                .expect("an accepted update applies in yrs");
            // Accepted means integrated whole: the door's view of each
            // client's clock is yrs's.
            let state = doc.transact().state_vector();
            let yrs_clocks: std::collections::HashMap<u64, u32> =
                state.iter().map(|(client, &clock)| (client.get(), clock)).collect();
            for (client, clock) in known.clocks() {
                let held = yrs_clocks.get(&client).copied().unwrap_or(0);
                assert_eq!(held, clock, "clock of client {client}");
            }
            Some(false)
        }
        Ok(Verdict::Hold { .. }) => Some(true),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let doc = yrs::Doc::new();
    let mut known = DocState::default();
    let mut held: Vec<&[u8]> = Vec::new();
    for update in data.split(|&b| b == 0xfe) {
        match offer(&doc, &mut known, update) {
            Some(true) => held.push(update),
            Some(false) => loop {
                let before = held.len();
                held.retain(|u| offer(&doc, &mut known, u) == Some(true));
                if held.len() == before {
                    break;
                }
            },
            None => {}
        }
    }
    let txn = doc.transact();
    let _ = txn.encode_state_as_update_v1(&StateVector::default());
});
