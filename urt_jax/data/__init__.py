"""From preference data to model batches: records, templates, processing, pipelines."""
