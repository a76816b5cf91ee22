"""Everything that speaks SQL: connections, flavor dialects, replication, locks, mysqld."""
