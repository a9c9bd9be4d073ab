"""`pacbayes bound`: loading checkpoints and data, then the one certificate route."""

