//! Helpers shared by the policy types' validation tests.

use crate::{Resource, parse_documents, validate};

/// Parses one YAML document and validates it: `Ok`, or each violation as (field, message). A
/// document that does not parse as a resource gives its error with an empty message.
pub(crate) fn field_errors(doc: &str) -> Result<(), Vec<(String, String)>> {
    let value = parse_documents(doc).expect("yaml").remove(0);
    let r = Resource::from_value(value).map_err(|e| vec![(e.to_string(), String::new())])?;
    validate(&r).map_err(|v| {
        v.violations
            .iter()
            .map(|x| (x.field.clone(), x.message.clone()))
            .collect()
    })
}
