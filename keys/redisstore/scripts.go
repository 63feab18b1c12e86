package redisstore

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the store, one .lua file each, wrapped once. Run uses
// EVALSHA and falls back to EVAL, so nothing needs loading first. Every key a
// script touches is passed in KEYS and carries the organization's hash tag,
// so each script runs on one Redis Cluster slot.

// createKeyScript adds a key after checking the organization, the name and
// the allocation.
//
//	KEYS[1] kg:{org}:org  KEYS[2] kg:{org}:keynames  KEYS[3] kg:{org}:alloc  KEYS[4] kg:{org}:key:<uid>
//	ARGV[1] name  ARGV[2] uid  ARGV[3] record JSON  ARGV[4] key max or ""  ARGV[5] allocation limit (<0: none)
//	reply: 1 created, 0 no organization, -1 name or uid taken, -2 over-allocated
//
//go:embed create_key.lua
var createKeySrc string
var createKeyScript = redis.NewScript(createKeySrc)

// updateKeyScript replaces a key record as a compare-and-set, and its
// maximum under the allocation rule when that changes.
//
//	KEYS[1] kg:{org}:keynames  KEYS[2] kg:{org}:alloc  KEYS[3] kg:{org}:key:<uid>
//	ARGV[1] name  ARGV[2] uid  ARGV[3] record as read  ARGV[4] new record  ARGV[5] new max, "" (none) or "=" (unchanged)  ARGV[6] allocation limit (<0: none)
//	reply: 1 updated, 0 no such key, -2 over-allocated, -3 changed since read
//
//go:embed update_key.lua
var updateKeySrc string
var updateKeyScript = redis.NewScript(updateKeySrc)

// deleteKeyScript removes a key's record, name, allocation and last-used
// time.
//
//	KEYS[1] kg:{org}:keynames  KEYS[2] kg:{org}:alloc  KEYS[3] kg:{org}:key:<uid>  KEYS[4] kg:{org}:used:<uid>
//	ARGV[1] name  ARGV[2] uid
//	reply: the deleted record JSON, or nil when there is no such key
//
//go:embed delete_key.lua
var deleteKeySrc string
var deleteKeyScript = redis.NewScript(deleteKeySrc)

// replaceKeyScript replaces a key record as a compare-and-set.
//
//	KEYS[1] kg:{org}:key:<uid>
//	ARGV[1] record as read  ARGV[2] new record
//	reply: 1 replaced, 0 no such key, -3 changed since read
//
//go:embed replace_key.lua
var replaceKeySrc string
var replaceKeyScript = redis.NewScript(replaceKeySrc)

// touchKeysScript moves the last-used times of n keys of one organization
// forward, skipping keys that no longer exist, with one MGET, one MSET and
// (for the keys without a time yet) one EXISTS for all of them. It runs in pipelines, with EVAL (Script.Eval), so
// it never meets a server that lacks it.
//
//	KEYS[i] kg:{org}:key:<uid>  KEYS[n+i] kg:{org}:used:<uid>
//	ARGV[i] the i-th key's use in Unix milliseconds
//	reply: how many times moved forward
//
//go:embed touch_keys.lua
var touchKeysSrc string
var touchKeysScript = redis.NewScript(touchKeysSrc)

// Integer replies shared by the scripts.
const (
	replyOK           = 1
	replyNotFound     = 0
	replyTaken        = -1
	replyOverAlloc    = -2
	replyChangedSince = -3
)

// readChangesScript reads the change log after a position with the log's
// counters, so a follower can tell whether it missed trimmed entries.
//
//	KEYS[1] kg:changes
//	ARGV[1] id read up to ("" for the end)  ARGV[2] at most this many entries
//	reply: {exists, entries-added, length, last-generated-id, entries}
//
//go:embed read_changes.lua
var readChangesSrc string
var readChangesScript = redis.NewScript(readChangesSrc)
