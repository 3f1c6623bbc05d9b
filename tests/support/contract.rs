//! The storage contract every backend must pass.

use std::sync::Arc;

use super::{read_v2, text_update_v2};
use y_redis::storage::{Storage, StoredDoc};

/// The stored pieces as one update v2 (what the engine merges on read).
fn merged(stored: &StoredDoc) -> Vec<u8> {
    yrs::merge_updates_v2(&stored.pieces).expect("pieces merge")
}

pub const ROOMS: &[&str] = &["plain", "a b/ü?x", "emoji 😀/room", "a%20b", "colon:room"];

pub async fn contract(storage: Arc<dyn Storage>) {
    for &room in ROOMS {
        assert!(
            storage
                .retrieve_doc(room, "index")
                .await
                .expect("retrieve")
                .is_none(),
            "{room}: starts empty"
        );

        storage
            .persist_doc(room, "index", text_update_v2(1, "one "), vec![])
            .await
            .expect("persist first");
        storage
            .persist_doc(room, "index", text_update_v2(2, "two"), vec![])
            .await
            .expect("persist second");
        storage
            .persist_doc(room, "other", text_update_v2(3, "elsewhere"), vec![])
            .await
            .expect("persist other doc");

        let stored = storage
            .retrieve_doc(room, "index")
            .await
            .expect("retrieve")
            .expect("stored");
        assert_eq!(
            stored.references.len(),
            2,
            "{room}: one reference per persisted piece"
        );
        let (text, sv) = read_v2(&merged(&stored));
        assert!(
            text.contains("one ") && text.contains("two"),
            "{room}: merged text is {text:?}"
        );
        assert_eq!(
            text.len(),
            "one two".len(),
            "{room}: nothing from the other doc"
        );
        assert_eq!(
            sv.get(&yrs::block::ClientID::new(1)),
            4,
            "{room}: state vector of client 1"
        );
        assert_eq!(
            sv.get(&yrs::block::ClientID::new(2)),
            3,
            "{room}: state vector of client 2"
        );
        assert_eq!(
            sv.get(&yrs::block::ClientID::new(3)),
            0,
            "{room}: the other doc is separate"
        );

        // Replace both pieces by one, as a compaction does.
        storage
            .persist_doc(room, "index", merged(&stored), vec![])
            .await
            .expect("persist merged");
        storage
            .delete_references(room, "index", &stored.references)
            .await
            .expect("delete replaced");
        let compacted = storage
            .retrieve_doc(room, "index")
            .await
            .expect("retrieve")
            .expect("stored");
        assert_eq!(
            compacted.references.len(),
            1,
            "{room}: one reference after compaction"
        );
        assert_eq!(
            read_v2(&merged(&compacted)).0,
            text,
            "{room}: same content after compaction"
        );

        // Deleting a reference twice is harmless.
        storage
            .delete_references(room, "index", &stored.references)
            .await
            .expect("delete again");
        storage
            .delete_references(room, "index", &compacted.references)
            .await
            .expect("delete last");
        assert!(
            storage
                .retrieve_doc(room, "index")
                .await
                .expect("retrieve")
                .is_none(),
            "{room}: gone"
        );
        let other = storage
            .retrieve_doc(room, "other")
            .await
            .expect("retrieve")
            .expect("other kept");
        assert_eq!(read_v2(&merged(&other)).0, "elsewhere");
    }
}
