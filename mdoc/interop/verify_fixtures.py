#!/usr/bin/env python3
"""Checks the interop fixtures in ../tests/data/interop WITHOUT the library that made them.

Standard library only: a small CBOR decoder/encoder, P-256 ECDSA verification,
ECDH, HKDF and HMAC written out here; openssl only for the X.509 chain check.
It checks structure (docType, disclosed elements, x5chain == ds.der), every
disclosed element's digest against the MSO, the issuerAuth signature with the
DS key, the deviceSignature / deviceMac over DeviceAuthenticationBytes built
from the transcript files (device_response_mac_owf_nonconformant.cbor must
FAIL the MAC check and match the library's 3-element MAC_structure instead),
and it reports encoding traits (indefinite lengths,
floats, non-minimal heads, map key order, tags).

Usage: python3 verify_fixtures.py        (exit status 0 = all checks passed)
"""

import hashlib
import hmac
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "interop")

# ----------------------------------------------------------------------------- CBOR

class Tag:
    def __init__(self, tag, value, raw):
        self.tag, self.value, self.raw = tag, value, raw

    def __repr__(self):
        return f"Tag({self.tag}, {self.value!r})"


class Simple:
    def __init__(self, v):
        self.v = v


class Traits:
    def __init__(self):
        self.indefinite = 0
        self.floats = 0
        self.non_minimal = 0
        self.tags = {}
        self.noncanonical_maps = []  # (path, keys) where key order is not length-first bytewise


class Decoder:
    """Decodes one item; records raw byte spans of every item so signatures can be checked over exact bytes."""

    def __init__(self, data, traits):
        self.d, self.i, self.t = data, 0, traits

    def head(self):
        ib = self.d[self.i]
        self.i += 1
        major, ai = ib >> 5, ib & 31
        if ai < 24:
            return major, ai, False
        if ai == 31:
            return major, None, True
        n = {24: 1, 25: 2, 26: 4, 27: 8}[ai]
        val = int.from_bytes(self.d[self.i:self.i + n], "big")
        self.i += n
        if major != 7:
            minimal = {24: 24, 25: 256, 26: 65536, 27: 1 << 32}[ai]
            if val < minimal:
                self.t.non_minimal += 1
        return major, (ai, val) if major == 7 else val, False

    def item(self, path="$"):
        start = self.i
        major, arg, indef = self.head()
        if indef:
            self.t.indefinite += 1
        if major == 0:
            v = arg
        elif major == 1:
            v = -1 - arg
        elif major in (2, 3):
            if indef:
                parts = []
                while self.d[self.i] != 0xFF:
                    parts.append(self.item(path))
                self.i += 1
                v = b"".join(parts) if major == 2 else "".join(parts)
            else:
                raw = self.d[self.i:self.i + arg]
                self.i += arg
                v = bytes(raw) if major == 2 else raw.decode("utf-8")
        elif major == 4:
            v = []
            if indef:
                while self.d[self.i] != 0xFF:
                    v.append(self.item(f"{path}[{len(v)}]"))
                self.i += 1
            else:
                for k in range(arg):
                    v.append(self.item(f"{path}[{k}]"))
        elif major == 5:
            pairs = []
            def one():
                ks = self.i
                k = self.item(path + ".<key>")
                kraw = bytes(self.d[ks:self.i])
                pairs.append((k, kraw, self.item(f"{path}.{k}")))
            if indef:
                while self.d[self.i] != 0xFF:
                    one()
                self.i += 1
            else:
                for _ in range(arg):
                    one()
            raws = [p[1] for p in pairs]
            if raws != sorted(raws, key=lambda r: (len(r), r)):
                self.t.noncanonical_maps.append((path, [p[0] for p in pairs]))
            v = {(p[0] if not isinstance(p[0], list) else tuple(p[0])): p[2] for p in pairs}
        elif major == 6:
            self.t.tags[arg] = self.t.tags.get(arg, 0) + 1
            inner = self.item(f"{path}<tag{arg}>")
            v = Tag(arg, inner, bytes(self.d[start:self.i]))
        else:
            if indef:
                raise ValueError("stray break")
            if isinstance(arg, tuple):
                ai, val = arg
                if ai == 24:
                    v = Simple(val)
                else:
                    self.t.floats += 1
                    v = float("nan")  # value not needed here
            else:
                v = {20: False, 21: True, 22: None, 23: Simple(23)}.get(arg, Simple(arg))
        return v


def cbor_decode(data, traits=None, path="$"):
    traits = traits or Traits()
    dec = Decoder(data, traits)
    v = dec.item(path)
    if dec.i != len(data):
        raise ValueError(f"{len(data) - dec.i} trailing bytes at {path}")
    return v


class Raw:
    def __init__(self, b):
        self.b = b


def enc_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < (1 << (8 * size)):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError


def cbor_encode(v):
    if isinstance(v, Raw):
        return v.b
    if isinstance(v, bool) or v is None:
        return bytes([{False: 0xF4, True: 0xF5, None: 0xF6}[v]])
    if isinstance(v, int):
        return enc_head(0, v) if v >= 0 else enc_head(1, -1 - v)
    if isinstance(v, bytes):
        return enc_head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return enc_head(3, len(b)) + b
    if isinstance(v, list):
        return enc_head(4, len(v)) + b"".join(cbor_encode(x) for x in v)
    if isinstance(v, Tag):
        return enc_head(6, v.tag) + cbor_encode(v.value)
    raise TypeError(type(v))


def tag24(b):
    return enc_head(6, 24) + cbor_encode(b)

# ----------------------------------------------------------------------------- P-256

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
     0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def on_curve(pt):
    x, y = pt
    return (y * y - (x * x * x + A * x + B)) % P == 0


def padd(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def pmul(k, pt):
    r = None
    while k:
        if k & 1:
            r = padd(r, pt)
        pt = padd(pt, pt)
        k >>= 1
    return r


def ecdsa_verify(pub, msg, sig):
    assert len(sig) == 64, "ECDSA signature must be raw r||s (64 bytes)"
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    e = int.from_bytes(hashlib.sha256(msg).digest(), "big")
    w = pow(s, -1, N)
    pt = padd(pmul(e * w % N, G), pmul(r * w % N, pub))
    return pt is not None and pt[0] % N == r


def high_s(sig):
    return int.from_bytes(sig[32:], "big") > N // 2


def hkdf_sha256(ikm, salt, info, length):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]

# ----------------------------------------------------------------------------- helpers

FAILS = []


def check(cond, what):
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        FAILS.append(what)


def read(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def ds_public_key(der):
    # SubjectPublicKeyInfo for id-ecPublicKey / prime256v1 followed by BIT STRING 03 42 00 04 ..
    marker = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107034200")
    i = der.index(marker) + len(marker)
    pt = der[i:i + 65]
    assert pt[0] == 4
    return int.from_bytes(pt[1:33], "big"), int.from_bytes(pt[33:], "big")


def cose_ec2_point(key):
    assert key[1] == 2 and key[-1] == 1, "expected kty EC2, crv P-256"
    return int.from_bytes(key[-2], "big"), int.from_bytes(key[-3], "big")

# ----------------------------------------------------------------------------- checks


def check_certs(manifest):
    print("certificates (openssl)")
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", os.path.join(DATA, "ds.der"), "-noout", "-text"],
                       capture_output=True, text=True)
    check(r.returncode == 0, "ds.der parses as X.509")
    check("1.0.18013.5.1.2" in r.stdout, "ds.der has EKU 1.0.18013.5.1.2")
    pem = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", os.path.join(DATA, "ds.der")],
                         capture_output=True, text=True).stdout
    for at in ("1767225600", str(manifest["suggested_verification_time"]["unix_seconds"])):  # MSO signed, suggested
        v = subprocess.run(["openssl", "verify", "-attime", at, "-CAfile", os.path.join(DATA, "iaca.pem")],
                           input=pem, capture_output=True, text=True)
        check(v.returncode == 0 and "OK" in v.stdout, f"ds.der chains to iaca.pem at unix {at}")
    d = subprocess.run(["openssl", "x509", "-in", os.path.join(DATA, "iaca.pem"), "-outform", "DER"], capture_output=True)
    check(d.stdout == read("iaca.der"), "iaca.pem and iaca.der are the same certificate")
    t = subprocess.run(["openssl", "x509", "-in", os.path.join(DATA, "iaca.pem"), "-noout", "-text"], capture_output=True, text=True).stdout
    check("CA:TRUE, pathlen:0" in t and "Certificate Sign, CRL Sign" in t and "C = US" in t, "iaca: CA:TRUE pathlen 0, keyCertSign+cRLSign, C=US")


def check_response(name, transcript_name, manifest, mac_key_file=None, mac_expect_valid=True):
    print(f"{name} (transcript {transcript_name})")
    traits = Traits()
    raw = read(name)
    resp = cbor_decode(raw, traits)
    transcript_raw = read(transcript_name)
    transcript = cbor_decode(transcript_raw, traits, "transcript")
    check(isinstance(transcript, list) and len(transcript) == 3, "SessionTranscript is a 3-element array (not tag-24 wrapped)")

    check(resp["version"] == "1.0" and resp["status"] == 0, "DeviceResponse version 1.0, status 0")
    docs = resp["documents"]
    check(len(docs) == 1, "one document")
    doc = docs[0]
    check(doc["docType"] == "org.iso.18013.5.1.mDL", "docType org.iso.18013.5.1.mDL")

    ia = doc["issuerSigned"]["issuerAuth"]
    check(not isinstance(ia, Tag), "issuerAuth is an untagged COSE_Sign1 array")
    prot_b, unprot, payload, sig = ia
    prot = cbor_decode(prot_b)
    check(prot == {1: -7}, f"issuerAuth protected header is {{1: -7}} (got {prot})")
    x5 = unprot.get(33)
    check(isinstance(x5, bytes), "x5chain (33) is a single bstr in the unprotected header")
    check(x5 == read("ds.der"), "x5chain holds ds.der")

    # MSO
    check(isinstance(cbor_decode(payload), Tag) and payload[:2] == b"\xd8\x18", "issuerAuth payload is MobileSecurityObjectBytes (#6.24)")
    mso = cbor_decode(payload, traits, "mso").value
    mso = cbor_decode(mso, traits, "mso")
    check(mso["docType"] == "org.iso.18013.5.1.mDL" and mso["version"] == "1.0" and mso["digestAlgorithm"] == "SHA-256",
          "MSO version/docType/digestAlgorithm")
    vi = mso["validityInfo"]
    got = {k: (v.tag, v.value) for k, v in vi.items()}
    mv = manifest["mso_validity"]
    want = {k: (0, mv[k]) for k in ("signed", "validFrom", "validUntil")}
    check(got == want, f"validityInfo {got}")

    issuer_ok = ecdsa_verify(ds_public_key(read("ds.der")), cbor_encode(["Signature1", prot_b, b"", payload]), sig)
    check(issuer_ok, "issuerAuth ES256 signature verifies with the ds.der key")
    print(f"        issuerAuth signature high-S: {high_s(sig)}")

    # disclosed elements + digests
    ns = doc["issuerSigned"]["nameSpaces"]
    check(list(ns) == ["org.iso.18013.5.1"], "one namespace org.iso.18013.5.1")
    digests = mso["valueDigests"]["org.iso.18013.5.1"]
    disclosed = {}
    for item in ns["org.iso.18013.5.1"]:
        check(isinstance(item, Tag) and item.tag == 24, "IssuerSignedItemBytes is #6.24")
        isi = cbor_decode(item.value, traits, "IssuerSignedItem")
        ok = hashlib.sha256(item.raw).digest() == digests.get(isi["digestID"])
        check(ok, f"digest of {isi['elementIdentifier']} (digestID {isi['digestID']}) matches the MSO")
        v = isi["elementValue"]
        disclosed[isi["elementIdentifier"]] = f"tag{v.tag}:{v.value}" if isinstance(v, Tag) else v
    want = {k: (f"tag1004:{v}" if k == "birth_date" else v) for k, v in manifest["disclosed_elements"].items()}
    check(disclosed == want, f"disclosed elements {disclosed}")
    print(f"        MSO digest count: {len(digests)}; digestIDs {sorted(digests)}")

    # device auth
    ds_ = doc["deviceSigned"]
    dns = ds_["nameSpaces"]
    check(isinstance(dns, Tag) and dns.tag == 24 and cbor_decode(dns.value) == {}, "deviceSigned.nameSpaces is #6.24(bstr {})")
    da_bytes = tag24(cbor_encode(["DeviceAuthentication", Raw(transcript_raw), doc["docType"], Raw(dns.raw)]))
    dk = mso["deviceKeyInfo"]["deviceKey"]
    dev_pub = cose_ec2_point(dk)
    check(on_curve(dev_pub), "MSO deviceKey is a P-256 point")
    auth = ds_["deviceAuth"]
    if mac_key_file is None:
        check(list(auth) == ["deviceSignature"], "deviceAuth has deviceSignature only")
        s = auth["deviceSignature"]
        check(not isinstance(s, Tag), "deviceSignature is an untagged COSE_Sign1")
        dprot_b, dunprot, dpayload, dsig = s
        check(cbor_decode(dprot_b) == {1: -7} and dunprot == {} and dpayload is None,
              "deviceSignature: protected {1:-7}, unprotected {}, payload nil (detached)")
        check(ecdsa_verify(dev_pub, cbor_encode(["Signature1", dprot_b, b"", da_bytes]), dsig),
              "deviceSignature verifies over DeviceAuthenticationBytes built from the transcript file")
        print(f"        deviceSignature high-S: {high_s(dsig)}")
    else:
        check(list(auth) == ["deviceMac"], "deviceAuth has deviceMac only")
        m = auth["deviceMac"]
        check(not isinstance(m, Tag), "deviceMac is an untagged COSE_Mac0")
        mprot_b, munprot, mpayload, mtag = m
        check(cbor_decode(mprot_b) == {1: 5} and munprot == {} and mpayload is None,
              "deviceMac: protected {1:5}, unprotected {}, payload nil (detached)")
        d = int(read(mac_key_file).decode().strip(), 16)
        reader_pub = pmul(d, G)
        erk = cbor_decode(transcript[1].value)
        check(cose_ec2_point(erk) == reader_pub, "reader_ephemeral_private.hex matches EReaderKey in the transcript")
        shared = pmul(d, dev_pub)[0].to_bytes(32, "big")
        salt = hashlib.sha256(tag24(transcript_raw)).digest()
        emac = hkdf_sha256(shared, salt, b"EMacKey", 32)
        want_tag = hmac.new(emac, cbor_encode(["MAC0", mprot_b, b"", da_bytes]), hashlib.sha256).digest()
        if mac_expect_valid:
            check(want_tag == mtag, "deviceMac tag matches HMAC-SHA256 under EMacKey derived here")
        else:
            check(want_tag != mtag, "deviceMac tag does NOT match the RFC 9052 MAC_structure (expected: negative fixture)")
            bad = hmac.new(emac, cbor_encode(["MAC0", mprot_b, da_bytes]), hashlib.sha256).digest()
            check(bad == mtag, "deviceMac tag matches the 3-element ['MAC0', protected, payload] the library used")

    print(f"        encoding traits: indefinite-length items {traits.indefinite}, floats {traits.floats}, "
          f"non-minimal heads {traits.non_minimal}, tags {dict(sorted(traits.tags.items()))}")
    nc = [p for p, _ in traits.noncanonical_maps]
    print(f"        maps not in RFC 8949 length-first canonical key order: {len(nc)} ({', '.join(sorted(set(nc)))})")


def main():
    with open(os.path.join(DATA, "manifest.json")) as f:
        manifest = json.load(f)
    check_certs(manifest)
    check_response("device_response_sig.cbor", "transcript_sig.cbor", manifest)
    check_response("device_response_sig_oid4vp.cbor", "transcript_sig_oid4vp.cbor", manifest)
    check_response("device_response_mac.cbor", "transcript_mac.cbor", manifest, "reader_ephemeral_private.hex")
    check_response("device_response_mac_owf_nonconformant.cbor", "transcript_mac.cbor", manifest,
                   "reader_ephemeral_private.hex", mac_expect_valid=False)
    print()
    print("ALL CHECKS PASSED" if not FAILS else f"{len(FAILS)} CHECK(S) FAILED")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
