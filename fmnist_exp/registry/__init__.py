"""Registry, the fifth stage: a study's candidate scored once on the test split, registered, and
given an alias by the promotion gate; the tags that let a version be rebuilt."""
