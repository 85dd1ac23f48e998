//! The integration tests and the heavier examples of `idem-fn`, in a package of their own so that
//! the root package's examples (the quickstart above all) build without their dependencies. This
//! library has no code: the package is here for its `tests/` and `examples/`.
