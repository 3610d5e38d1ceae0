"""Where requests and their images are recorded: SQLite by default, MongoDB when configured.

`base.RecordStore` is the interface; `sqlite.SqliteRecordStore` and `mongo.MongoRecordStore`
implement it. Nothing is re-exported here, so importing the interface (as the API does)
loads neither driver.
"""
