//! The scaling library's integration tests, one binary: properties of the scaling policy and the
//! reaper over generated fleets (proptest), and the shape of the metrics it emits (EMF).

// Scenarios read top to bottom: the function-length rule is for shipped code.
#![allow(clippy::too_many_lines)]

mod emf_schema;
mod policy_properties;
mod reaper_properties;
