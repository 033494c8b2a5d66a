//! Every document of the invalid corpus is rejected by the model with the expected field path.

use std::path::Path;

use meshzone_model::testdata::invalid_documents;
use meshzone_model::{Resource, parse_documents, validate};

#[test]
fn invalid_corpus_is_rejected_with_field_paths() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/invalid");
    let docs = invalid_documents(&dir).expect("corpus");
    assert!(docs.len() >= 20, "corpus has only {} documents", docs.len());
    for doc in docs.iter().filter(|d| !d.store_level) {
        let values = parse_documents(&doc.text).expect("yaml");
        let outcome = Resource::from_value(values[0].clone()).and_then(|r| validate(&r));
        let violations = outcome.expect_err(&format!("{} was accepted", doc.path.display()));
        assert!(
            violations
                .violations
                .iter()
                .any(|v| v.field == doc.field && v.message.contains(&doc.message)),
            "{}: expected {}: {}, got {violations}",
            doc.path.display(),
            doc.field,
            doc.message
        );
    }
}
