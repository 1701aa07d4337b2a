"""A deliberately small MQTT 3.1.1 client over raw sockets, for sending exactly the bytes a
test needs (DUP flags, chosen packet ids, malformed packets)."""

import socket
import struct


def _remaining(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id, username=None, password=None, keepalive=60, clean=False):
    flags = (0x02 if clean else 0) | (0x80 if username else 0) | (0x40 if password else 0)
    var = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive)
    payload = _str(client_id) + (_str(username) if username else b"") + (_str(password) if password else b"")
    body = var + payload
    return bytes([0x10]) + _remaining(len(body)) + body


def publish_packet(topic, payload, qos=1, pkid=1, dup=False):
    body = _str(topic) + (struct.pack(">H", pkid) if qos else b"") + payload
    first = 0x30 | (0x08 if dup else 0) | (qos << 1)
    return bytes([first]) + _remaining(len(body)) + body


def subscribe_packet(pkid, topic_filter, qos=1):
    body = struct.pack(">H", pkid) + _str(topic_filter) + bytes([qos])
    return bytes([0x82]) + _remaining(len(body)) + body


def puback_packet(pkid):
    return bytes([0x40, 0x02]) + struct.pack(">H", pkid)


def split_packet(buf):
    """The first whole packet in `buf` as ((type, flags, body), rest), or None when `buf`
    does not hold one yet."""
    if len(buf) < 2:
        return None
    n, mult, i = 0, 1, 1
    while i < len(buf):
        b = buf[i]
        n += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    else:
        return None
    if len(buf) < i + n:
        return None
    return (buf[0] >> 4, buf[0] & 0x0F, buf[i:i + n]), buf[i + n:]


class Packets:
    """MQTT exchanges over any transport with `send(bytes)` and `packet()`."""

    def connect(self, client_id, username, password, clean=False):
        self.send(connect_packet(client_id, username, password, clean=clean))
        p = self.packet()
        assert p is not None and p[0] == 2, f"expected CONNACK, got {p}"
        return p[2][1]

    def publish(self, topic, payload, pkid, dup=False):
        """QoS 1 publish; returns the PUBACK's packet id."""
        self.send(publish_packet(topic, payload, 1, pkid, dup))
        p = self.packet()
        assert p is not None and p[0] == 4, f"expected PUBACK, got {p}"
        return struct.unpack(">H", p[2][:2])[0]


class Raw(Packets):
    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def packet(self):
        """Reads one packet: (type, flags, body), or None if the server closed."""
        while True:
            got = split_packet(self.buf)
            if got:
                packet, self.buf = got
                return packet
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def closed(self, timeout=5):
        """True if the server closes the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
