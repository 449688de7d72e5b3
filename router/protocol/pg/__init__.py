"""The PostgreSQL v3 frontend/backend protocol, sans-IO."""
