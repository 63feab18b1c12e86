package redisstore

import "strconv"

// Every Redis key the store uses is built here.
//
// Everything about one organization carries the hash tag {<orgID>}, so the
// keys of one organization live in one Cluster slot and one Lua script can
// check and write them atomically. The global lookup indices cannot share an
// organization's slot; they are written with plain commands (see the ordering
// rule in store.go).

const prefix = "kg:"

// revocationsChannel is the pub/sub channel revocations travel on.
const revocationsChannel = prefix + "revocations"

// orgKey is the organization record (JSON of keys.Org).
func orgKey(orgID string) string { return prefix + "{" + orgID + "}:org" }

// keyKey is the record of one key of an organization (JSON of keys.Key).
func keyKey(orgID, uid string) string { return prefix + "{" + orgID + "}:key:" + uid }

// usedKey is the last-used time of a key, in Unix milliseconds. It is kept
// beside the record, not in it, so that recording a use never conflicts with
// a change of the key (the record's compare-and-set).
func usedKey(orgID, uid string) string { return prefix + "{" + orgID + "}:used:" + uid }

// keyNamesKey is the hash name → uid of an organization's keys.
func keyNamesKey(orgID string) string { return prefix + "{" + orgID + "}:keynames" }

// allocKey is the hash uid → per-key maximum of the organization's keys that
// have one; its values add up to the organization's allocated quota.
func allocKey(orgID string) string { return prefix + "{" + orgID + "}:alloc" }

// subOrgsKey is the set of ids of the organizations a partner created. It
// carries the partner's hash tag.
func subOrgsKey(partnerID string) string { return prefix + "{" + partnerID + "}:suborgs" }

// Global indices and records, one slot each.

// plansKey is the hash plan id → plan record (JSON of keys.Plan).
func plansKey() string { return prefix + "plans" }

// planField is the field of a plan in plansKey.
func planField(id int64) string { return strconv.FormatInt(id, 10) }

// orgsKey is the sorted set of every organization id, all with score 0 so
// that ZRANGE returns them in byte order.
func orgsKey() string { return prefix + "orgs" }

// orgTermsKey is the sorted set of keys.SearchCursor(term, id) for every
// search term of every organization (keys.Org.SearchTerms), all with score
// 0: a prefix search is one ZRANGEBYLEX.
func orgTermsKey() string { return prefix + "orgterms" }

// orgTermsBuiltKey marks that orgTermsKey also holds the organizations
// created before it existed (see indexOldOrgs).
func orgTermsBuiltKey() string { return prefix + "orgterms:built" }

// usernamesKey is the hash username → organization id.
func usernamesKey() string { return prefix + "usernames" }

// hashIndexKey maps the hex SHA-256 of a secret to "<orgID>/<uid>". The
// entry of a rotated key's previous secret expires with its grace period (plus
// a margin for clock skew; lookups check the grace themselves).
func hashIndexKey(hexHash string) string { return prefix + "hash:" + hexHash }

// uidIndexKey maps a key's uid (access_key) to its organization id.
func uidIndexKey(uid string) string { return prefix + "uid:" + uid }

// changesKey is the change log: a stream of JSON keys.Revocation (field
// "r"), one entry per change to a key, an organization or a plan, capped at
// the store's change-log length. It is one key of its own slot.
func changesKey() string { return prefix + "changes" }
