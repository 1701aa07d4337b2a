"""X.509 material for the device-certificate tests, made with `cryptography`: CAs,
device certificates (self-signed or signed by a CA), and the files the SDKs load."""

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


class Cert:
    def __init__(self, cert, key, chain=()):
        self.cert, self.key, self.chain = cert, key, list(chain)

    @property
    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self):
        return self.cert.public_bytes(serialization.Encoding.DER)

    def thumbprint(self, algorithm="sha1"):
        h = hashes.SHA1() if algorithm == "sha1" else hashes.SHA256()
        return self.cert.fingerprint(h).hex().upper()

    def write(self, directory, name):
        """Writes `name.pem` (this certificate, then its intermediates) and `name.key`;
        returns their paths."""
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_text(self.pem + "".join(c.pem for c in self.chain))
        key_path.write_bytes(self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return str(cert_path), str(key_path)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(cn, key, issuer, not_before, not_after, is_ca):
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn))
         .issuer_name(issuer.cert.subject if issuer else _name(cn))
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before)
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                            critical=False)
    return b


def ca(cn, not_after=NOW + 365 * DAY, issuer=None):
    """A CA certificate, self-signed or (with `issuer`) an intermediate."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (_builder(cn, key, issuer, NOW - DAY, not_after, True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    chain = [issuer] + issuer.chain if issuer else []
    return Cert(b.sign(issuer.key if issuer else key, hashes.SHA256()), key, chain)


def device(cn, issuer=None, not_before=NOW - DAY, not_after=NOW + 30 * DAY):
    """A device certificate for `cn`: self-signed, or signed by `issuer` (its chain up to,
    not including, the root goes with it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (_builder(cn, key, issuer, not_before, not_after, False)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    # Intermediates go with the certificate; the root does not.
    chain = [c for c in ([issuer] + issuer.chain if issuer else []) if c.cert.issuer != c.cert.subject]
    return Cert(b.sign(issuer.key if issuer else key, hashes.SHA256()), key, chain)
