"""The usage log, batches and reports: SQLite and PostgreSQL behind one Store protocol."""
