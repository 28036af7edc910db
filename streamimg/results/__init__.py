"""Results of analyses, kept in a SQL database so they can be browsed after the stream moved on.

:mod:`~streamimg.results.schema` defines the tables (analyses, per-frame results, consumer
positions, rejected records), :mod:`~streamimg.results.store` reads and writes them over
SQLAlchemy Core (SQLite or PostgreSQL), and :mod:`~streamimg.results.sink` is the job that
copies a topology's analytics and annotated-frame topics into them, exactly-once, with the
records checked by :mod:`~streamimg.results.records` and the frames stored as JPEG files by
:mod:`~streamimg.results.images`.
"""
