// Writes ../fixtures/auth_lib0.json: a key pair exported by lib0 (the format
// `0ecdsa-generate-keypair` prints) and tokens signed by lib0's encodeJwt,
// the token code @y/redis uses. Regenerate with `node gen-auth-fixtures.mjs`.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as ecdsa from 'lib0/crypto/ecdsa'
import * as jwt from 'lib0/crypto/jwt'

const here = path.dirname(fileURLToPath(import.meta.url))
const keypair = await ecdsa.generateKeyPair({ extractable: true })
const other = await ecdsa.generateKeyPair({ extractable: true })
const publicJwk = JSON.stringify(await ecdsa.exportKeyJwk(keypair.publicKey))
const privateJwk = JSON.stringify(await ecdsa.exportKeyJwk(keypair.privateKey))
const farFutureMs = 4102444800000 // 2100-01-01 in milliseconds, as lib0's getUnixTime() counts
const tokens = {
  valid_ms_exp: await jwt.encodeJwt(keypair.privateKey, { iss: 'fixture', exp: farFutureMs, yuserid: 'user1' }),
  valid_no_exp: await jwt.encodeJwt(keypair.privateKey, { iss: 'fixture', yuserid: 'user2' }),
  expired_ms_exp: await jwt.encodeJwt(keypair.privateKey, { iss: 'fixture', exp: 1000000000000, yuserid: 'user1' }),
  no_userid: await jwt.encodeJwt(keypair.privateKey, { iss: 'fixture', exp: farFutureMs }),
  wrong_key: await jwt.encodeJwt(other.privateKey, { iss: 'fixture', exp: farFutureMs, yuserid: 'user1' })
}
const [h, p, s] = tokens.valid_ms_exp.split('.')
const tampered = Buffer.from(JSON.stringify({ iss: 'fixture', exp: farFutureMs, yuserid: 'admin' })).toString('base64url')
tokens.tampered_payload = [h, tampered, s].join('.')
const out = { generated_by: 'tests/e2e/gen-auth-fixtures.mjs', public_jwk: publicJwk, private_jwk: privateJwk, tokens }
fs.writeFileSync(path.join(here, '..', 'fixtures', 'auth_lib0.json'), JSON.stringify(out, null, 2) + '\n')
console.log('wrote fixtures/auth_lib0.json')
