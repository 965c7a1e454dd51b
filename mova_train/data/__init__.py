"""Data side of mova_train: shard schema, clip probing, webdataset stages, collate and datamodule."""
