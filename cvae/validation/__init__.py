"""The `validate` stage: Great Expectations suites on the raw dataset, and their report."""
