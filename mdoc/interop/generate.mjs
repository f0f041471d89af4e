// Generates ISO/IEC 18013-5 (mdoc / mDL) interop fixtures for gatehouse with an
// INDEPENDENT implementation: @owf/mdoc (OpenWallet Foundation) builds and encodes
// every mdoc structure; @peculiar/x509 builds the test certificates; node's own
// crypto supplies keys and the primitive operations (@owf/mdoc is crypto-agnostic
// and asks its caller for ECDSA, SHA-256, ECDH + HKDF and HMAC).
//
// !!! TEST KEYS ONLY !!!  Every key made here is random, generated on each run,
// and exists only to produce test fixtures. None of it is, or may become, a
// production trust anchor. The only private key written out is the reader's
// ephemeral key for the deviceMac fixture (reader_ephemeral_private.hex), which
// a verifier needs to check the MAC.
//
// Usage (from this directory):  npm ci && node generate.mjs
// Output: ../tests/data/interop/  (overwritten on every run; signatures, keys and
// certificates change every time, so regenerate only on purpose and commit the
// result together with manifest.json).

import {
  createECDH,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  hkdfSync,
  randomBytes,
  sign as nodeSign,
  verify as nodeVerify,
  webcrypto,
} from 'node:crypto'
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import * as x509 from '@peculiar/x509'
import {
  BleOptions,
  CoseKey,
  Curve,
  DateOnly,
  DeviceAuth,
  DeviceAuthentication,
  DeviceEngagement,
  DeviceKey,
  DeviceMac,
  DeviceNamespaces,
  DeviceRequest,
  DeviceResponse,
  DeviceRetrievalMethod,
  DeviceRetrievalMethodType,
  DeviceSigned,
  DocRequest,
  Document,
  EDeviceKey,
  EReaderKey,
  Header,
  Issuer,
  IssuerSigned,
  ItemsRequest,
  KeyType,
  limitDisclosureToDeviceRequestNameSpaces,
  MacAlgorithm,
  ProtectedHeaders,
  Security,
  SessionTranscript,
  SignatureAlgorithm,
  UnprotectedHeaders,
} from '@owf/mdoc'

const here = dirname(fileURLToPath(import.meta.url))
const OUT = join(here, '..', 'tests', 'data', 'interop')

const pkg = (name) => JSON.parse(readFileSync(join(here, 'node_modules', ...name.split('/'), 'package.json'), 'utf8'))

// ---------------------------------------------------------------- fixed inputs

const DOC_TYPE = 'org.iso.18013.5.1.mDL'
const NAMESPACE = 'org.iso.18013.5.1'

const MSO_SIGNED = new Date('2026-01-01T00:00:00Z')
const MSO_VALID_FROM = new Date('2026-01-01T00:00:00Z')
const MSO_VALID_UNTIL = new Date('2029-12-31T00:00:00Z')

const IACA_NOT_BEFORE = new Date('2025-01-01T00:00:00Z')
const IACA_NOT_AFTER = new Date('2035-01-01T00:00:00Z')
const DS_NOT_BEFORE = new Date('2025-12-01T00:00:00Z')
const DS_NOT_AFTER = new Date('2030-01-01T00:00:00Z')

// Inside the MSO validity and both certificate validities.
const SUGGESTED_VERIFICATION_TIME = new Date('2027-06-01T00:00:00Z')

const MDOC_DS_EKU = '1.0.18013.5.1.2' // id-mdl-kp-mdlDS

// Element values. full-date values use @owf/mdoc's DateOnly, which encodes as
// CBOR tag 1004 with a "YYYY-MM-DD" text string (ISO 18013-5 full-date).
const ELEMENTS = [
  ['family_name', 'Doe'],
  ['given_name', 'Jane'],
  ['birth_date', new DateOnly('1990-05-01')],
  ['issue_date', new DateOnly('2026-01-01')],
  ['expiry_date', new DateOnly('2029-12-31')],
  ['issuing_country', 'US'],
  ['issuing_authority', 'Gatehouse Test DMV (TEST ONLY)'],
  ['document_number', 'TEST-DL-0000001'],
  ['age_over_18', true],
  ['age_over_19', true],
  ['age_over_21', true],
]

const DISCLOSED = ['age_over_19', 'birth_date', 'family_name', 'document_number', 'issuing_country']

// ---------------------------------------------------------------- helpers

const iso = (d) => d.toISOString().replace('.000Z', 'Z')
const toHex = (b) => Buffer.from(b).toString('hex')
const b64u = (b) => Buffer.from(b).toString('base64url')
const fromB64u = (s) => new Uint8Array(Buffer.from(s, 'base64url'))

const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n
const isHighS = (sig) => BigInt('0x' + toHex(sig.subarray(32))) > P256_N / 2n

const HASHES = { 'SHA-256': 'sha256', 'SHA-384': 'sha384', 'SHA-512': 'sha512' }

// A fresh P-256 key pair as raw bytes: x, y (32 each) and the scalar d.  TEST KEY ONLY.
function newP256() {
  const ecdh = createECDH('prime256v1')
  ecdh.generateKeys()
  const pub = ecdh.getPublicKey() // 0x04 || x || y
  const d = ecdh.getPrivateKey()
  const x = pub.subarray(1, 33)
  const y = pub.subarray(33, 65)
  // createECDH may return a short private key if it has leading zero bytes.
  const d32 = Buffer.concat([Buffer.alloc(32 - d.length), d])
  return { x: new Uint8Array(x), y: new Uint8Array(y), d: new Uint8Array(d32) }
}

function coseKey({ x, y, d }, extra = {}) {
  return CoseKey.create({ keyType: KeyType.Ec, curve: Curve['P-256'], x, y, ...(d ? { d } : {}), ...extra })
}

function nodePrivateKey(key) {
  return createPrivateKey({ key: { kty: 'EC', crv: 'P-256', x: b64u(key.x), y: b64u(key.y), d: b64u(key.d) }, format: 'jwk' })
}

function nodePublicKey(key) {
  return createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: b64u(key.x), y: b64u(key.y) }, format: 'jwk' })
}

// @owf/mdoc passes keys to calculateEphemeralMacKey either as encoded COSE_Key
// maps (DeviceMac.create) or as raw bytes (DeviceMac.verify): accept both.
function rawPrivate(bytes) {
  if (bytes.length === 32) return bytes
  return CoseKey.decode(bytes).privateKey
}
function rawPublic(bytes) {
  if (bytes.length === 65 && bytes[0] === 4) return bytes
  return CoseKey.decode(bytes).publicKey
}

// ---------------------------------------------------------------- mdoc context

const mdocContext = {
  crypto: {
    random: (length) => new Uint8Array(randomBytes(length)),
    digest: ({ digestAlgorithm, bytes }) => new Uint8Array(createHash(HASHES[digestAlgorithm]).update(bytes).digest()),
    // ISO 18013-5 9.1.3.5: EMacKey = HKDF-SHA-256(ikm = ECDH shared secret,
    // salt = SHA-256(SessionTranscriptBytes), info = "EMacKey", L = 32).
    calculateEphemeralMacKey: ({ privateKey, publicKey, sessionTranscriptBytes, info }) => {
      const ecdh = createECDH('prime256v1')
      ecdh.setPrivateKey(Buffer.from(rawPrivate(privateKey)))
      const ikm = ecdh.computeSecret(Buffer.from(rawPublic(publicKey)))
      const salt = createHash('sha256').update(sessionTranscriptBytes).digest()
      const k = new Uint8Array(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'utf8'), 32))
      return CoseKey.create({ keyType: KeyType.Oct, k })
    },
  },
  cose: {
    sign1: {
      sign: ({ toBeSigned, key, algorithm }) => {
        const alg = algorithm ?? key.algorithm
        if (alg !== SignatureAlgorithm.ES256) throw new Error(`only ES256 is wired up here, got ${alg}`)
        const sig = nodeSign('sha256', toBeSigned, { key: nodePrivateKey(key), dsaEncoding: 'ieee-p1363' })
        return new Uint8Array(sig)
      },
      verify: ({ key, sign1 }) =>
        nodeVerify('sha256', sign1.toBeSigned, { key: nodePublicKey(key), dsaEncoding: 'ieee-p1363' }, sign1.signature),
    },
    mac0: {
      sign: ({ key, toBeAuthenticated }) => new Uint8Array(createHmac('sha256', key.privateKey).update(toBeAuthenticated).digest()),
      verify: ({ mac0, key }) =>
        Buffer.from(createHmac('sha256', key.privateKey).update(mac0.toBeAuthenticated).digest()).equals(Buffer.from(mac0.tag)),
    },
  },
  x509: {
    // Not needed for generation (nothing here verifies with the library).
    getIssuerNameField: () => {
      throw new Error('x509 not wired up in the fixture generator')
    },
    getPublicKey: () => {
      throw new Error('x509 not wired up in the fixture generator')
    },
    verifyCertificateChain: () => {
      throw new Error('x509 not wired up in the fixture generator')
    },
    getCertificateData: () => {
      throw new Error('x509 not wired up in the fixture generator')
    },
  },
}

// ---------------------------------------------------------------- certificates

async function makeCertificates() {
  x509.cryptoProvider.set(webcrypto)
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
  const signingAlgorithm = { name: 'ECDSA', hash: 'SHA-256' }

  // TEST KEYS ONLY.
  const iacaKeys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])
  const dsKeys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])

  const iacaName = 'C=US, O=Gatehouse Interop TEST ONLY, CN=Gatehouse Interop Test IACA (TEST KEYS ONLY)'
  const dsName = 'C=US, O=Gatehouse Interop TEST ONLY, CN=Gatehouse Interop Test Document Signer (TEST KEYS ONLY)'

  const iaca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01a1ca',
    name: iacaName,
    notBefore: IACA_NOT_BEFORE,
    notAfter: IACA_NOT_AFTER,
    signingAlgorithm,
    keys: iacaKeys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(iacaKeys.publicKey),
      new x509.IssuerAlternativeNameExtension([{ type: 'url', value: 'https://iaca.gatehouse-interop.invalid' }]),
    ],
  })

  const ds = await x509.X509CertificateGenerator.create({
    serialNumber: '02d5',
    subject: dsName,
    issuer: iaca.subject,
    notBefore: DS_NOT_BEFORE,
    notAfter: DS_NOT_AFTER,
    signingAlgorithm,
    publicKey: dsKeys.publicKey,
    signingKey: iacaKeys.privateKey,
    extensions: [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([MDOC_DS_EKU], true),
      await x509.AuthorityKeyIdentifierExtension.create(iacaKeys.publicKey),
      await x509.SubjectKeyIdentifierExtension.create(dsKeys.publicKey),
      new x509.IssuerAlternativeNameExtension([{ type: 'url', value: 'https://iaca.gatehouse-interop.invalid' }]),
    ],
  })

  const dsJwk = await webcrypto.subtle.exportKey('jwk', dsKeys.privateKey)
  const dsKey = { x: fromB64u(dsJwk.x), y: fromB64u(dsJwk.y), d: fromB64u(dsJwk.d) }

  return { iaca, ds, dsKey }
}

// ---------------------------------------------------------------- session transcripts

// ISO 18013-5 QR/proximity form: [DeviceEngagementBytes, EReaderKeyBytes, null],
// both bytes items tag-24 wrapped, Handover = null (QR handover).
function qrTranscript(eReaderKeyPublic) {
  const eDeviceKey = newP256() // mdoc's ephemeral session key. TEST KEY ONLY.
  // DeviceEngagement.create() takes the *encoded* sub-structures.
  const security = Security.create({
    cipherSuiteIdentifier: 1,
    eDeviceKey: EDeviceKey.create({ keyType: KeyType.Ec, curve: Curve['P-256'], x: eDeviceKey.x, y: eDeviceKey.y }),
  })
  const ble = DeviceRetrievalMethod.create({
    type: DeviceRetrievalMethodType.Ble,
    version: 1,
    retrievalOptions: BleOptions.create({
      peripheralServerMode: false,
      centralClientMode: true,
      centralClientModeUuid: new Uint8Array(Buffer.from('45efef742b2c4837a9a3b0e1d05a6917', 'hex')),
    }),
  })
  const deviceEngagement = DeviceEngagement.create({
    version: '1.0',
    security: security.encodedStructure,
    deviceRetrievalMethods: [ble.encodedStructure],
  })
  const eReaderKey = EReaderKey.create({ keyType: KeyType.Ec, curve: Curve['P-256'], x: eReaderKeyPublic.x, y: eReaderKeyPublic.y })
  return SessionTranscript.forQrHandover({ deviceEngagement, eReaderKey })
}

// The steps of @owf/mdoc's DeviceResponse.create (0.6.0) for a deviceMac, with an
// explicit external_aad handed to DeviceMac.create (see the note in main()).
async function macDeviceResponse({ deviceRequest, issuerSigned, sessionTranscript, signingKey, ephemeralKey, externalAad }) {
  const documents = []
  for (const docRequest of deviceRequest.docRequests) {
    const docType = docRequest.itemsRequest.docType
    const deviceNamespaces = DeviceNamespaces.create({ deviceNamespaces: new Map() })
    const deviceAuthenticationBytes = DeviceAuthentication.create({ sessionTranscript, docType, deviceNamespaces }).encode({
      asDataItem: true,
    })
    const deviceMac = await DeviceMac.create(
      {
        protectedHeaders: ProtectedHeaders.create({ protectedHeaders: new Map([[Header.Algorithm, signingKey.algorithm]]) }),
        unprotectedHeaders: UnprotectedHeaders.create({}),
        detachedPayload: deviceAuthenticationBytes,
        externalAad,
        privateKey: signingKey,
        ephemeralKey,
        sessionTranscript,
      },
      mdocContext
    )
    documents.push(
      Document.create({
        docType,
        issuerSigned: IssuerSigned.create({
          issuerNamespaces: limitDisclosureToDeviceRequestNameSpaces(issuerSigned, docRequest),
          issuerAuth: issuerSigned.issuerAuth,
        }),
        deviceSigned: DeviceSigned.create({ deviceNamespaces, deviceAuth: DeviceAuth.create({ deviceMac }) }),
      })
    )
  }
  return DeviceResponse.createSimple({ version: '1.0', status: 0, documents })
}

// ---------------------------------------------------------------- main

async function main() {
  mkdirSync(OUT, { recursive: true })
  const write = (name, data) => {
    writeFileSync(join(OUT, name), data)
    console.log(`wrote ${join('tests/data/interop', name)} (${data.length} bytes)`)
  }

  const { iaca, ds, dsKey } = await makeCertificates()
  const iacaDer = new Uint8Array(iaca.rawData)
  const dsDer = new Uint8Array(ds.rawData)

  // Device key (SDeviceKey, in the MSO). TEST KEY ONLY.
  const deviceKey = newP256()

  // ---- issuance
  const issuer = new Issuer(DOC_TYPE, mdocContext)
  issuer.addIssuerNamespace(NAMESPACE, Object.fromEntries(ELEMENTS))
  const issuerSigned = await issuer.sign({
    signingKey: coseKey(dsKey),
    certificates: [dsDer],
    algorithm: SignatureAlgorithm.ES256,
    digestAlgorithm: 'SHA-256',
    deviceKeyInfo: {
      deviceKey: DeviceKey.create({ keyType: KeyType.Ec, curve: Curve['P-256'], x: deviceKey.x, y: deviceKey.y }),
    },
    validityInfo: { signed: MSO_SIGNED, validFrom: MSO_VALID_FROM, validUntil: MSO_VALID_UNTIL },
  })

  const deviceRequest = DeviceRequest.create({
    docRequests: [
      DocRequest.create({
        itemsRequest: ItemsRequest.create({
          docType: DOC_TYPE,
          namespaces: { [NAMESPACE]: Object.fromEntries(DISCLOSED.map((e) => [e, false])) },
        }),
      }),
    ],
  })

  // ---- DeviceResponse with deviceSignature (ES256), QR-handover transcript
  const sigReader = newP256() // reader ephemeral key; only its public half is used. TEST KEY ONLY.
  const transcriptSig = qrTranscript(sigReader)
  const responseSig = await DeviceResponse.createWithDeviceRequest(
    {
      deviceRequest,
      sessionTranscript: transcriptSig,
      issuerSigned: [issuerSigned],
      signature: { signingKey: coseKey(deviceKey, { algorithm: SignatureAlgorithm.ES256 }) },
    },
    mdocContext
  )

  // ---- DeviceResponse with deviceSignature (ES256), OpenID4VP 1.0 handover transcript
  const transcriptOid4vp = await SessionTranscript.forOid4Vp(
    {
      clientId: 'x509_san_dns:verifier.gatehouse-interop.invalid',
      nonce: 'gatehouse-interop-test-nonce-0001',
      responseUri: 'https://verifier.gatehouse-interop.invalid/response',
    },
    mdocContext
  )
  const responseOid4vp = await DeviceResponse.createWithDeviceRequest(
    {
      deviceRequest,
      sessionTranscript: transcriptOid4vp,
      issuerSigned: [issuerSigned],
      signature: { signingKey: coseKey(deviceKey, { algorithm: SignatureAlgorithm.ES256 }) },
    },
    mdocContext
  )

  // ---- DeviceResponse with deviceMac (HMAC-SHA256 under EMacKey), QR-handover transcript
  const macReader = newP256() // reader ephemeral key (EReaderKey). TEST KEY ONLY - written out.
  const transcriptMac = qrTranscript(macReader)
  // @owf/mdoc takes the COSE "alg" of the MAC (5 = HMAC 256/256) from the
  // signing key's algorithm field; the key itself is SDeviceKey (private).
  const macSigningKey = coseKey(deviceKey, { algorithm: MacAlgorithm.HS256 })
  const macEphemeralKey = coseKey({ x: macReader.x, y: macReader.y })

  // (a) Conformant: built from the library's own parts, passing an explicit empty
  // external_aad. @owf/mdoc 0.6.0's Mac0.toBeAuthenticated leaves external_aad
  // OUT of MAC_structure unless one is given (["MAC0", protected, payload], 3
  // elements) whereas RFC 9052 6.3 requires ["MAC0", protected, external_aad,
  // payload]; DeviceResponse.createWithDeviceRequest gives it no way to pass one.
  const responseMac = await macDeviceResponse({
    deviceRequest,
    issuerSigned,
    sessionTranscript: transcriptMac,
    signingKey: macSigningKey,
    ephemeralKey: macEphemeralKey,
    externalAad: new Uint8Array(0),
  })
  // (b) The library's default path, kept as a NEGATIVE fixture: its deviceMac
  // tag is over the 3-element MAC_structure, so a conforming verifier rejects it.
  const responseMacNonconformant = await DeviceResponse.createWithDeviceRequest(
    {
      deviceRequest,
      sessionTranscript: transcriptMac,
      issuerSigned: [issuerSigned],
      mac: { signingKey: macSigningKey, ephemeralKey: macEphemeralKey },
    },
    mdocContext
  )

  // ---- write
  write('iaca.der', iacaDer)
  write('iaca.pem', Buffer.from(iaca.toString('pem') + '\n'))
  write('ds.der', dsDer)
  write('device_response_sig.cbor', responseSig.encode())
  write('transcript_sig.cbor', transcriptSig.encode())
  write('device_response_sig_oid4vp.cbor', responseOid4vp.encode())
  write('transcript_sig_oid4vp.cbor', transcriptOid4vp.encode())
  write('device_response_mac.cbor', responseMac.encode())
  write('device_response_mac_owf_nonconformant.cbor', responseMacNonconformant.encode())
  write('transcript_mac.cbor', transcriptMac.encode())
  write('reader_ephemeral_private.hex', Buffer.from(toHex(macReader.d) + '\n'))

  const jsonValue = (v) => (v instanceof DateOnly ? v.toISOString() : v)
  const elementValues = Object.fromEntries(ELEMENTS.map(([k, v]) => [k, jsonValue(v)]))
  const lib = pkg('@owf/mdoc')
  const x509pkg = pkg('@peculiar/x509')
  const manifest = {
    warning: 'TEST FIXTURES ONLY. All keys are random test keys generated by generate.mjs; never trust them outside tests.',
    generator: 'mdoc/interop/generate.mjs',
    library: { name: lib.name, version: lib.version, repository: lib.repository?.url },
    certificate_library: { name: x509pkg.name, version: x509pkg.version },
    node_version: process.version,
    generated_at: iso(new Date()),
    docType: DOC_TYPE,
    namespace: NAMESPACE,
    digest_algorithm: 'SHA-256',
    issuer_signature_algorithm: 'ES256',
    issued_elements: elementValues,
    full_date_elements_cbor: 'tag 1004 text "YYYY-MM-DD" (birth_date, issue_date, expiry_date)',
    disclosed_elements: Object.fromEntries(DISCLOSED.map((k) => [k, elementValues[k]])),
    mso_validity: {
      signed: iso(MSO_SIGNED),
      validFrom: iso(MSO_VALID_FROM),
      validUntil: iso(MSO_VALID_UNTIL),
      cbor: 'tag 0 text "YYYY-MM-DDTHH:MM:SSZ" (no fractional seconds)',
    },
    device_key: { kty: 'EC2', crv: 'P-256', x: toHex(deviceKey.x), y: toHex(deviceKey.y) },
    certificates: {
      iaca: {
        file: 'iaca.der / iaca.pem',
        subject: iaca.subject,
        notBefore: iso(IACA_NOT_BEFORE),
        notAfter: iso(IACA_NOT_AFTER),
        serial: iaca.serialNumber,
      },
      ds: {
        file: 'ds.der',
        subject: ds.subject,
        issuer: ds.issuer,
        notBefore: iso(DS_NOT_BEFORE),
        notAfter: iso(DS_NOT_AFTER),
        serial: ds.serialNumber,
        extendedKeyUsage: MDOC_DS_EKU,
      },
    },
    issuer_auth: {
      cose_tag_18: false,
      x5chain: 'single bstr (ds.der) in the unprotected header',
      protected_header: '{1: -7}',
      signature_high_s: isHighS(issuerSigned.issuerAuth.signature),
    },
    device_signature_high_s: {
      'device_response_sig.cbor': isHighS(responseSig.documents[0].deviceSigned.deviceAuth.deviceSignature.signature),
      'device_response_sig_oid4vp.cbor': isHighS(responseOid4vp.documents[0].deviceSigned.deviceAuth.deviceSignature.signature),
    },
    ecdsa_note: 'ECDSA signatures are raw r||s (64 bytes) from node/OpenSSL, which does not normalise S: high-S values occur at random.',
    digest_ids: 'random 32-bit unsigned integers (the library draws each digestID at random), not 0..n-1',
    suggested_verification_time: {
      iso: iso(SUGGESTED_VERIFICATION_TIME),
      unix_seconds: SUGGESTED_VERIFICATION_TIME.getTime() / 1000,
    },
    fixtures: {
      'device_response_sig.cbor': {
        device_auth: 'deviceSignature (COSE_Sign1, ES256, detached payload = DeviceAuthenticationBytes)',
        session_transcript_file: 'transcript_sig.cbor',
        session_transcript_form: '[#6.24(bstr DeviceEngagement), #6.24(bstr EReaderKey), null]  (ISO 18013-5 QR handover)',
      },
      'device_response_sig_oid4vp.cbor': {
        device_auth: 'deviceSignature (COSE_Sign1, ES256, detached payload = DeviceAuthenticationBytes)',
        session_transcript_file: 'transcript_sig_oid4vp.cbor',
        session_transcript_form:
          '[null, null, ["OpenID4VPHandover", SHA-256(CBOR [client_id, nonce, null, response_uri])]]  (OpenID4VP 1.0 Appendix B.2.6.1)',
      },
      'device_response_mac.cbor': {
        device_auth: 'deviceMac (COSE_Mac0, alg 5 HMAC-256/256, detached payload = DeviceAuthenticationBytes)',
        session_transcript_file: 'transcript_mac.cbor',
        session_transcript_form: '[#6.24(bstr DeviceEngagement), #6.24(bstr EReaderKey), null]  (ISO 18013-5 QR handover)',
        reader_ephemeral_private_key_file: 'reader_ephemeral_private.hex',
        emac_key_derivation:
          'HKDF-SHA-256(ikm = ECDH(EReaderKey.priv, SDeviceKey.pub).x, salt = SHA-256(#6.24(bstr SessionTranscript)), info = "EMacKey", L = 32)',
        mac_structure: '["MAC0", protected, h\'\', DeviceAuthenticationBytes]  (RFC 9052; built from library parts with an explicit empty external_aad)',
        expected: 'valid',
      },
      'device_response_mac_owf_nonconformant.cbor': {
        device_auth: 'deviceMac (COSE_Mac0, alg 5) as produced by the library default path DeviceResponse.createWithDeviceRequest',
        session_transcript_file: 'transcript_mac.cbor',
        reader_ephemeral_private_key_file: 'reader_ephemeral_private.hex',
        mac_structure:
          '["MAC0", protected, DeviceAuthenticationBytes]  (3 elements, external_aad missing: @owf/mdoc 0.6.0 bug, not RFC 9052)',
        expected: 'deviceMac INVALID for a conforming verifier (issuerAuth, digests and everything else are valid)',
      },
    },
    transcript_files_note: 'transcript_*.cbor hold the plain SessionTranscript array (not tag-24 wrapped).',
  }
  write('manifest.json', Buffer.from(JSON.stringify(manifest, null, 2) + '\n'))
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
