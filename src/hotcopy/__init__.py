"""hotcopy: re-seed a MySQL/MariaDB replica from a healthy replica, transactionally."""

__version__ = "0.1.0"
