"""Great Expectations suites of the quality gate (suites/*.json), shipped in the wheel."""
