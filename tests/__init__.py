"""The test suite. tests/<subpackage>/test_<module>.py tests mvm_jax/<subpackage>/<module>.py (the
package's top-level modules: tests/test_<module>.py); e2e/ runs the entry points end to end
(multi-host, faults, a new user's data, the notebook); recipes/ checks the configs/ presets against
the papers' and official code's settings; helpers/ holds the scripts the tests start as processes."""
