"""Thin command lines over `mova_train.data`: build, inspect and encode shards, make synthetic clips."""
