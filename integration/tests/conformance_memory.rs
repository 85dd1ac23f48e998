//! The store conformance suite against the embedded `MemoryStore`.

idem::conformance_tests!(memory, async { (idem::MemoryStore::new(), ()) });
