"""Review (Low): TLS, delay and heartbeat of the source's channel go into CHANGE MASTER."""

from __future__ import annotations

from hotcopy.mysql.flavor import Coordinates
from hotcopy.mysql.flavor.mariadb import MariaDB
from hotcopy.mysql.flavor.mysql import MySQL

#: Columns of a real MariaDB 10.11 SHOW ALL SLAVES STATUS row (values of a TLS channel).
MARIADB_ROW = {"Master_SSL_Allowed": "Yes", "Master_SSL_CA_File": "/etc/mysql/ca.pem",
               "Master_SSL_CA_Path": "", "Master_SSL_Cert": "/etc/mysql/client-cert.pem",
               "Master_SSL_Cipher": "", "Master_SSL_Key": "/etc/mysql/client-key.pem",
               "Master_SSL_Verify_Server_Cert": "Yes", "Master_SSL_Crl": "",
               "Master_SSL_Crlpath": "", "SQL_Delay": 3600, "Slave_heartbeat_period": "5.000"}
#: MySQL 8.0.26+ SHOW REPLICA STATUS names.
MYSQL_ROW = {"Source_SSL_Allowed": "Yes", "Source_SSL_CA_File": "/etc/ca.pem",
             "Source_SSL_Verify_Server_Cert": "No", "SQL_Delay": 0}


def coords(options: dict[str, object], gtid: str = "0-1-5") -> Coordinates:
    return Coordinates("10.0.0.1", 3306, "repl", "mysql-bin.000002", 1234, gtid,
                       "gtid_slave_pos", "mariadb", {"replication_options": options})


def test_mariadb_carries_tls_delay_and_heartbeat() -> None:
    flavor = MariaDB((10, 11, 19))
    sql, args = flavor.change_master(coords(flavor.replication_options(MARIADB_ROW)), "repl",
                                     "secret")
    assert ("MASTER_SSL = 1, MASTER_SSL_CA = %s, MASTER_SSL_CERT = %s, MASTER_SSL_KEY = %s, "
            "MASTER_SSL_VERIFY_SERVER_CERT = 1, MASTER_DELAY = %s, "
            "MASTER_HEARTBEAT_PERIOD = %s") in sql
    assert args[4:] == ("/etc/mysql/ca.pem", "/etc/mysql/client-cert.pem",
                        "/etc/mysql/client-key.pem", 3600, 5.0)
    assert sql.count("%s") == len(args)


def test_mysql_uses_source_words_and_no_empty_options() -> None:
    flavor = MySQL((8, 0, 36))
    options = flavor.replication_options(MYSQL_ROW)
    sql, args = flavor.change_master(coords(options, gtid=""), "repl", "secret")
    assert sql.startswith("CHANGE REPLICATION SOURCE TO")
    assert sql.endswith(", SOURCE_SSL = 1, SOURCE_SSL_CA = %s")
    assert args[-1] == "/etc/ca.pem" and sql.count("%s") == len(args)


def test_a_job_recorded_before_the_fix_still_works() -> None:
    sql, args = MariaDB((10, 11, 19)).change_master(
        Coordinates("h", 1, "u", "f", 4, "", "gtid_slave_pos", "mariadb"), "u", "p")
    assert "SSL" not in sql and sql.count("%s") == len(args)
