# Prelude for the Python client scripts of the integration tests (prepended by
# util.rs `Server::python`). Real clients from the standard library: poplib
# (POP3, POP3_SSL, stls) and smtplib.LMTP. Connections go to 127.0.0.1 (no
# name lookups); TLS verifies the server's self-signed certificate as the only
# trust anchor, for the name "localhost".
import os
import poplib
import smtplib
import socket
import ssl
import sys

POP3_PORT = int(os.environ["POBOX_TEST_POP3"])
POP3S_PORT = int(os.environ["POBOX_TEST_POP3S"])
LMTP_PORT = int(os.environ["POBOX_TEST_LMTP"])
CERT = os.environ["POBOX_TEST_CERT"]
PW = os.environ["POBOX_TEST_PW"]
TIMEOUT = 10


def tls_context():
    """Verifies the chain against the server's cert and the host name."""
    ctx = ssl.create_default_context(cafile=CERT)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def pop3():
    """poplib.POP3 on the cleartext port; stls() will verify 'localhost'."""
    p = poplib.POP3("127.0.0.1", POP3_PORT, timeout=TIMEOUT)
    p.host = "localhost"  # the name stls() checks the certificate against
    return p


class POP3S(poplib.POP3_SSL):
    """poplib.POP3_SSL, connecting to 127.0.0.1 and verifying 'localhost'."""

    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.context.wrap_socket(sock, server_hostname="localhost")


def pop3s():
    return POP3S("localhost", POP3S_PORT, timeout=TIMEOUT, context=tls_context())


def lmtp():
    return smtplib.LMTP("127.0.0.1", LMTP_PORT, local_hostname="client.test", timeout=TIMEOUT)


def check(cond, *what):
    if not cond:
        print("CHECK FAILED:", *what, file=sys.stderr)
        sys.exit(1)
