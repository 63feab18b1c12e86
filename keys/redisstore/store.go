// Package redisstore is the Redis implementation of keys.Store, for a single
// Redis server or a Redis Cluster (any redis.UniversalClient).
//
// Records are the JSON of the domain types (their JSON tags are the storage
// format; fields added later are omitted when empty, so a record written by an
// earlier version reads as a key that is enabled, never expires and has no
// rate limit). Everything about one organization carries the hash tag
// {<orgID>} (see keys.go), so each multi-key atomic step — creating a key with
// its allocation check and name uniqueness, deleting a key, changing a key
// with its maximum, recording last-used times — is one Lua script on one
// Cluster slot. A key's last-used time is a key of its own beside the record,
// so recording uses never conflicts with the record's compare-and-set.
//
// The global lookup indices (secret hash → key, uid → organization, username →
// organization, the organization list) cannot share an organization's slot and
// are written with plain commands, in an order that never lets an index make a
// key usable that the organization's records do not hold:
//
//   - on create, the organization-tagged record is written first and the
//     index after;
//   - on delete, the index is removed first and the record after;
//   - a lookup that finds an index entry whose record is missing answers
//     keys.ErrNotFound.
//
// A failure between the two steps leaves, at worst, a record without its index
// (a key that cannot authenticate) or an index without its record (read as not
// found), never a deleted key that still authenticates. A rotation indexes
// the new secret before it writes the record and retires the old secret's
// entry after; lookups by hash check the record (current secret, or previous
// secret within its grace), so a stale entry never authenticates.
//
// Every change to a key, an organization or a plan is appended, as JSON
// keys.Revocation, to the change log kg:changes (a stream capped at the
// change-log length, see changes.go), which FollowChanges reads from the last
// position a follower saw, and published on the pub/sub channel
// kg:revocations, which Watch subscribes to and sidecars older than the log
// listen to. Data written before the log existed needs nothing: the stream
// is created by the first change.
package redisstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redisfail"
	"github.com/keygate/keygate/keys"
)

var _ keys.Store = (*Store)(nil)

// Store is a keys.Store on Redis. It is safe for concurrent use. The zero
// value is not usable; call New.
type Store struct {
	rdb          redis.UniversalClient
	now          func() time.Time
	healthCheck  time.Duration
	changeLogLen int64
	// termsBuilt: indexOldOrgs found the search index complete.
	termsBuilt atomic.Bool
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock that stamps published revocations and ends
// rotation grace periods in lookups (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// WithWatchHealthCheck sets how long Watch waits for a message before it pings
// the server to check that the subscription is alive (default 3s). A
// subscription that answers neither a message nor the ping within two such
// intervals counts as broken.
func WithWatchHealthCheck(d time.Duration) Option {
	return func(s *Store) { s.healthCheck = d }
}

// New returns a Store on rdb. Every call takes its deadline from its context;
// the store adds no retries beyond the client's own.
func New(rdb redis.UniversalClient, opts ...Option) *Store {
	s := &Store{rdb: rdb, now: time.Now, healthCheck: 3 * time.Second, changeLogLen: DefaultChangeLogLen}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Ping sends PING.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fail("pinging redis", err)
	}
	return nil
}

// ----- plans -----

// CreatePlan adds a plan; keys.ErrConflict when its id is taken.
func (s *Store) CreatePlan(ctx context.Context, p keys.Plan) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding plan: %w", err)
	}
	ok, err := s.rdb.HSetNX(ctx, plansKey(), planField(p.ID), b).Result()
	if err != nil {
		return fail("creating plan", err)
	}
	if !ok {
		return fmt.Errorf("plan %d: %w", p.ID, keys.ErrConflict)
	}
	return nil
}

// Plan returns the plan with the given id.
func (s *Store) Plan(ctx context.Context, id int64) (keys.Plan, error) {
	v, err := s.rdb.HGet(ctx, plansKey(), planField(id)).Result()
	if errors.Is(err, redis.Nil) {
		return keys.Plan{}, fmt.Errorf("plan %d: %w", id, keys.ErrNotFound)
	}
	if err != nil {
		return keys.Plan{}, fail("reading plan", err)
	}
	return decode[keys.Plan]("plan", v)
}

// Plans lists every plan ordered by id.
func (s *Store) Plans(ctx context.Context) ([]keys.Plan, error) {
	vs, err := s.rdb.HVals(ctx, plansKey()).Result()
	if err != nil {
		return nil, fail("listing plans", err)
	}
	out := make([]keys.Plan, 0, len(vs))
	for _, v := range vs {
		p, err := decode[keys.Plan]("plan", v)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b keys.Plan) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// maxAttempts bounds the compare-and-set retries of a partial update that
// keeps meeting concurrent changes.
const maxAttempts = 10

// UpdatePlan applies p to a plan as a compare-and-set of the plans hash
// (WATCH on one key, so it works on Redis Cluster too), retrying when another
// plan changed meanwhile, and publishes Revocation{PlanID: id}. When the
// revocation cannot be published the update is kept and the error wraps
// keys.ErrNotBroadcast.
func (s *Store) UpdatePlan(ctx context.Context, id int64, p keys.PlanPatch) (keys.Plan, error) {
	if err := p.Validate(); err != nil {
		return keys.Plan{}, err
	}
	var next keys.Plan
	for range maxAttempts {
		err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			v, err := tx.HGet(ctx, plansKey(), planField(id)).Result()
			if errors.Is(err, redis.Nil) {
				return fmt.Errorf("plan %d: %w", id, keys.ErrNotFound)
			}
			if err != nil {
				return fail("reading plan", err)
			}
			cur, err := decode[keys.Plan]("plan", v)
			if err != nil {
				return err
			}
			next = p.Apply(cur)
			b, err := json.Marshal(next)
			if err != nil {
				return fmt.Errorf("encoding plan: %w", err)
			}
			_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				pipe.HSet(ctx, plansKey(), planField(id), b)
				return nil
			})
			return err
		}, plansKey())
		switch {
		case errors.Is(err, redis.TxFailedErr):
			continue
		case err != nil:
			if errors.Is(err, keys.ErrNotFound) || errors.Is(err, keys.ErrUnavailable) {
				return keys.Plan{}, err
			}
			return keys.Plan{}, fail("updating plan", err)
		}
		return next, s.publish(ctx, keys.Revocation{PlanID: id})
	}
	return keys.Plan{}, fmt.Errorf("plan %d kept changing concurrently: %w", id, keys.ErrConflict)
}

// ----- organizations -----

// CreateOrg adds an organization; keys.ErrConflict when its id or username is
// taken. The record is claimed first (SET NX), then the username (HSETNX);
// when the username is taken the record is removed again.
func (s *Store) CreateOrg(ctx context.Context, o keys.Org) error {
	if err := o.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encoding organization: %w", err)
	}
	ok, err := s.rdb.SetNX(ctx, orgKey(o.ID), b, 0).Result()
	if err != nil {
		return fail("creating organization", err)
	}
	if !ok {
		return fmt.Errorf("organization %s: %w", o.ID, keys.ErrConflict)
	}
	if o.Username != "" {
		ok, err := s.rdb.HSetNX(ctx, usernamesKey(), o.Username, o.ID).Result()
		if err != nil || !ok {
			// The organization must not exist without its login.
			if derr := s.rdb.Del(ctx, orgKey(o.ID)).Err(); derr != nil {
				return fail("removing organization after a failed username claim", derr)
			}
			if err != nil {
				return fail("claiming username", err)
			}
			return fmt.Errorf("username %q: %w", o.Username, keys.ErrConflict)
		}
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, orgsKey(), redis.Z{Score: 0, Member: o.ID})
		p.ZAdd(ctx, orgTermsKey(), termMembers(o.ID, o.SearchTerms())...)
		if o.PartnerID != "" {
			p.SAdd(ctx, subOrgsKey(o.PartnerID), o.ID)
		}
		return nil
	})
	if err != nil {
		return fail("indexing organization", err)
	}
	return nil
}

// Org returns the organization with the given id.
func (s *Store) Org(ctx context.Context, id string) (keys.Org, error) {
	v, err := s.rdb.Get(ctx, orgKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return keys.Org{}, fmt.Errorf("organization %s: %w", id, keys.ErrNotFound)
	}
	if err != nil {
		return keys.Org{}, fail("reading organization", err)
	}
	return decode[keys.Org]("organization", v)
}

// OrgByUsername returns the organization whose login is username.
func (s *Store) OrgByUsername(ctx context.Context, username string) (keys.Org, error) {
	id, err := s.rdb.HGet(ctx, usernamesKey(), username).Result()
	if errors.Is(err, redis.Nil) {
		return keys.Org{}, fmt.Errorf("username %q: %w", username, keys.ErrNotFound)
	}
	if err != nil {
		return keys.Org{}, fail("reading username index", err)
	}
	o, err := s.Org(ctx, id)
	if err != nil {
		return keys.Org{}, err
	}
	if o.Username != username {
		return keys.Org{}, fmt.Errorf("username %q: %w", username, keys.ErrNotFound)
	}
	return o, nil
}

// Orgs lists every organization ordered by id.
func (s *Store) Orgs(ctx context.Context) ([]keys.Org, error) {
	ids, err := s.rdb.ZRange(ctx, orgsKey(), 0, -1).Result()
	if err != nil {
		return nil, fail("listing organizations", err)
	}
	return s.orgsByID(ctx, ids, func(keys.Org) bool { return true })
}

// SubOrgs lists the organizations created by partner, ordered by id.
func (s *Store) SubOrgs(ctx context.Context, partnerID string) ([]keys.Org, error) {
	ids, err := s.rdb.SMembers(ctx, subOrgsKey(partnerID)).Result()
	if err != nil {
		return nil, fail("listing sub-organizations", err)
	}
	return s.orgsByID(ctx, ids, func(o keys.Org) bool { return o.PartnerID == partnerID })
}

// termMembers are the orgTermsKey members of an organization's terms.
func termMembers(id string, terms []string) []redis.Z {
	out := make([]redis.Z, len(terms))
	for i, t := range terms {
		out[i] = redis.Z{Score: 0, Member: keys.SearchCursor(t, id)}
	}
	return out
}

// FindOrgs returns one page of organizations (see keys.Store). Without a
// search it is one ZRANGEBYLEX on the id index (O(log n + page)) and one
// pipelined GET per organization of the page. A search reads the term
// index from the prefix on (O(log m + batch), m ≈ 4 terms per
// organization) and the records of the hits in pipelines, until the page
// is full: an organization found by several terms costs a record read per
// term, and the first search after an upgrade indexes the organizations an
// earlier version created (indexOldOrgs), once.
func (s *Store) FindOrgs(ctx context.Context, q keys.OrgQuery) (keys.OrgPage, error) {
	q, err := q.Normalize()
	if err != nil {
		return keys.OrgPage{}, err
	}
	if q.Search == "" {
		from := "-"
		if q.After != "" {
			from = "(" + q.After
		}
		ids, err := s.rdb.ZRangeByLex(ctx, orgsKey(), &redis.ZRangeBy{Min: from, Max: "+", Count: int64(q.Limit + 1)}).Result()
		if err != nil {
			return keys.OrgPage{}, fail("listing organizations", err)
		}
		var page keys.OrgPage
		if len(ids) > q.Limit {
			ids = ids[:q.Limit]
			page.Next = ids[len(ids)-1]
		}
		page.Orgs, err = s.orgsByID(ctx, ids, func(keys.Org) bool { return true })
		return page, err
	}
	if err := s.indexOldOrgs(ctx); err != nil {
		return keys.OrgPage{}, err
	}
	from, to := "["+q.Search, "["+q.Search+"\xff" // no UTF-8 byte is 0xff
	if q.After != "" {
		from = "(" + q.After
	}
	batch := min(2*q.Limit+2, 1000)
	var page keys.OrgPage
	var last string // the cursor of the page's last organization
	for {
		members, err := s.rdb.ZRangeByLex(ctx, orgTermsKey(), &redis.ZRangeBy{Min: from, Max: to, Count: int64(batch)}).Result()
		if err != nil {
			return keys.OrgPage{}, fail("searching organizations", err)
		}
		ids := make([]string, 0, len(members))
		for _, m := range members {
			if _, id, ok := keys.SplitSearchCursor(m); ok && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		recs, err := s.orgRecords(ctx, ids)
		if err != nil {
			return keys.OrgPage{}, err
		}
		for _, m := range members {
			term, id, _ := keys.SplitSearchCursor(m)
			o, ok := recs[id]
			if t, found := o.SearchTerm(q.Search); !ok || !found || t != term {
				continue // stale entry, or the organization is listed under another term
			}
			if len(page.Orgs) == q.Limit {
				page.Next = last
				return page, nil
			}
			page.Orgs, last = append(page.Orgs, o), m
		}
		if len(members) < batch {
			return page, nil
		}
		from = "(" + members[len(members)-1]
	}
}

// indexOldOrgs adds the search terms of every organization to orgTermsKey
// unless orgTermsBuiltKey says it was done: organizations created by a
// version before the term index have none. It reads every organization,
// once per store (and once per process to learn that it was done).
func (s *Store) indexOldOrgs(ctx context.Context) error {
	if s.termsBuilt.Load() {
		return nil
	}
	n, err := s.rdb.Exists(ctx, orgTermsBuiltKey()).Result()
	if err != nil {
		return fail("reading the search index marker", err)
	}
	if n == 0 {
		ids, err := s.rdb.ZRange(ctx, orgsKey(), 0, -1).Result()
		if err != nil {
			return fail("listing organizations", err)
		}
		for chunk := range slices.Chunk(ids, 500) {
			recs, err := s.orgRecords(ctx, chunk)
			if err != nil {
				return err
			}
			var members []redis.Z
			for _, o := range recs {
				members = append(members, termMembers(o.ID, o.SearchTerms())...)
			}
			if len(members) > 0 {
				if err := s.rdb.ZAdd(ctx, orgTermsKey(), members...).Err(); err != nil {
					return fail("indexing organizations", err)
				}
			}
		}
		if err := s.rdb.Set(ctx, orgTermsBuiltKey(), "1", 0).Err(); err != nil {
			return fail("writing the search index marker", err)
		}
	}
	s.termsBuilt.Store(true)
	return nil
}

// orgRecords reads the records of ids in one pipeline; missing ones are
// left out.
func (s *Store) orgRecords(ctx context.Context, ids []string) (map[string]keys.Org, error) {
	os, err := s.orgsByID(ctx, ids, func(keys.Org) bool { return true })
	if err != nil {
		return nil, err
	}
	out := make(map[string]keys.Org, len(os))
	for _, o := range os {
		out[o.ID] = o
	}
	return out, nil
}

// orgsByID reads the records of ids in one pipeline, skipping those that are
// missing or that keep does not want, ordered by id.
func (s *Store) orgsByID(ctx context.Context, ids []string, keep func(keys.Org) bool) ([]keys.Org, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.StringCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Get(ctx, orgKey(id))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fail("reading organizations", err)
	}
	out := make([]keys.Org, 0, len(ids))
	for _, c := range cmds {
		v, err := c.Result()
		if errors.Is(err, redis.Nil) {
			continue // index entry without record
		}
		if err != nil {
			return nil, fail("reading organization", err)
		}
		o, err := decode[keys.Org]("organization", v)
		if err != nil {
			return nil, err
		}
		if keep(o) {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b keys.Org) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// UpdateOrg replaces an existing organization if it is still at o.Revision
// (WATCH on its record, a single key, so it works on Redis Cluster too),
// bumps o.Revision, and publishes a revocation of all its keys. Its username
// cannot change (a *keys.InvalidError). When the revocation cannot be
// published the update is kept and the error wraps keys.ErrNotBroadcast.
func (s *Store) UpdateOrg(ctx context.Context, o *keys.Org) error {
	if err := o.Validate(); err != nil {
		return err
	}
	var old keys.Org
	next := *o
	err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		b, err := tx.Get(ctx, orgKey(o.ID)).Bytes()
		if errors.Is(err, redis.Nil) {
			return fmt.Errorf("organization %s: %w", o.ID, keys.ErrNotFound)
		}
		if err != nil {
			return fail("reading organization", err)
		}
		if err := json.Unmarshal(b, &old); err != nil {
			return fmt.Errorf("decoding organization %s: %w", o.ID, err)
		}
		if o.Username != old.Username {
			return &keys.InvalidError{Field: "username", Reason: "cannot be changed"}
		}
		if o.Revision != old.Revision {
			return fmt.Errorf("organization %s changed concurrently: %w", o.ID, keys.ErrConflict)
		}
		next.Revision = old.Revision + 1
		nb, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encoding organization: %w", err)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, orgKey(o.ID), nb, 0)
			return nil
		})
		return err
	}, orgKey(o.ID))
	switch {
	case errors.Is(err, redis.TxFailedErr):
		return fmt.Errorf("organization %s changed concurrently: %w", o.ID, keys.ErrConflict)
	case err != nil:
		var inv *keys.InvalidError
		if errors.Is(err, keys.ErrNotFound) || errors.Is(err, keys.ErrConflict) || errors.As(err, &inv) {
			return err
		}
		return fail("updating organization", err)
	}
	o.Revision = next.Revision
	oldTerms, newTerms := old.SearchTerms(), o.SearchTerms()
	if o.PartnerID != old.PartnerID || !slices.Equal(oldTerms, newTerms) {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if old.PartnerID != o.PartnerID && old.PartnerID != "" {
				p.SRem(ctx, subOrgsKey(old.PartnerID), o.ID)
			}
			if old.PartnerID != o.PartnerID && o.PartnerID != "" {
				p.SAdd(ctx, subOrgsKey(o.PartnerID), o.ID)
			}
			// New terms first, stale ones after; FindOrgs checks every hit
			// against the record, so a stale entry never lists it twice.
			p.ZAdd(ctx, orgTermsKey(), termMembers(o.ID, newTerms)...)
			var stale []any
			for _, t := range oldTerms {
				if !slices.Contains(newTerms, t) {
					stale = append(stale, keys.SearchCursor(t, o.ID))
				}
			}
			if len(stale) > 0 {
				p.ZRem(ctx, orgTermsKey(), stale...)
			}
			return nil
		})
		if err != nil {
			return fail("indexing organization", err)
		}
	}
	return s.publish(ctx, keys.Revocation{OrgID: o.ID})
}

// ----- keys -----

// CreateKey adds k to its organization (see keys.Store). The record, its name
// and its allocation are written by one script; the secret-hash and uid
// indices after it.
func (s *Store) CreateKey(ctx context.Context, k keys.Key, allocLimit int64) error {
	if err := k.Validate(); err != nil {
		return err
	}
	k.Previous = nil
	b, err := encodeKey(k)
	if err != nil {
		return err
	}
	n, err := createKeyScript.Run(ctx, s.rdb,
		[]string{orgKey(k.OrgID), keyNamesKey(k.OrgID), allocKey(k.OrgID), keyKey(k.OrgID, k.UID)},
		k.Name, k.UID, b, maxArg(k.MaxAPIRequests), allocLimit,
	).Int64()
	if err != nil {
		return fail("running create-key script", err)
	}
	switch n {
	case replyOK:
	case replyNotFound:
		return fmt.Errorf("organization %s: %w", k.OrgID, keys.ErrNotFound)
	case replyTaken:
		return fmt.Errorf("key %q: %w", k.Name, keys.ErrConflict)
	case replyOverAlloc:
		return fmt.Errorf("key %q: %w", k.Name, keys.ErrOverAllocated)
	default:
		return fmt.Errorf("create-key script: unexpected reply %d", n)
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, hashIndexKey(k.SecretHash.String()), k.OrgID+"/"+k.UID, 0)
		p.Set(ctx, uidIndexKey(k.UID), k.OrgID, 0)
		return nil
	})
	if err != nil {
		return fail("indexing key", err)
	}
	return nil
}

// UpdateKey applies p to a key as a compare-and-set of its record (with its
// maximum under the allocation rule when p changes it), retrying when the
// record changed meanwhile, and publishes its revocation. A previous secret
// whose grace has ended is dropped from the record on the way. When the
// revocation cannot be published the change is kept, the updated key is
// returned and the error wraps keys.ErrNotBroadcast.
func (s *Store) UpdateKey(ctx context.Context, orgID, name string, p keys.KeyPatch, allocLimit int64) (keys.Key, error) {
	if err := p.Validate(); err != nil {
		return keys.Key{}, err
	}
	maxMode := "="
	if p.MaxAPIRequests.Set {
		maxMode = maxArg(p.MaxAPIRequests.Value)
	}
	for range maxAttempts {
		uid, err := s.uidByName(ctx, orgID, name)
		if err != nil {
			return keys.Key{}, err
		}
		cur, k, err := s.keyRecord(ctx, orgID, uid)
		if err != nil {
			return keys.Key{}, err
		}
		k = p.Apply(k)
		if k.Previous != nil && !k.PreviousValid(s.now()) {
			k.Previous = nil
		}
		b, err := encodeKey(k)
		if err != nil {
			return keys.Key{}, err
		}
		n, err := updateKeyScript.Run(ctx, s.rdb,
			[]string{keyNamesKey(orgID), allocKey(orgID), keyKey(orgID, uid)},
			name, uid, cur, b, maxMode, allocLimit,
		).Int64()
		if err != nil {
			return keys.Key{}, fail("running update-key script", err)
		}
		switch n {
		case replyOK:
			return k, s.publish(ctx, keys.Revocation{OrgID: orgID, KeyUID: uid})
		case replyNotFound:
			return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
		case replyOverAlloc:
			return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrOverAllocated)
		case replyChangedSince:
			continue
		default:
			return keys.Key{}, fmt.Errorf("update-key script: unexpected reply %d", n)
		}
	}
	return keys.Key{}, fmt.Errorf("key %q kept changing concurrently: %w", name, keys.ErrConflict)
}

// indexSlack is how much longer than its grace the index entry of a previous
// secret lives in Redis, so that a Redis clock behind the sidecars' never
// ends a grace early. Lookups check the grace against the store's clock.
const indexSlack = time.Minute

// RotateKey gives a key a new secret (see keys.Store). The steps keep the
// ordering rule of the package doc: the new secret's index entry is written
// first (alone it makes nothing usable: a lookup checks the record), then
// the record as a compare-and-set (retried when the record changed
// meanwhile), then the old index entries are cleaned up: the previous
// secret's is set to expire with its grace, or removed with no grace, and the
// one of a secret retired by an earlier rotation is removed. A failed cleanup
// leaves entries that lookups ignore, since they check the record. When the
// revocation cannot be published the rotation is kept and the error wraps
// keys.ErrNotBroadcast.
func (s *Store) RotateKey(ctx context.Context, orgID, name string, r keys.Rotation) (keys.Key, time.Time, error) {
	if err := r.Validate(); err != nil {
		return keys.Key{}, time.Time{}, err
	}
	for range maxAttempts {
		uid, err := s.uidByName(ctx, orgID, name)
		if err != nil {
			return keys.Key{}, time.Time{}, err
		}
		if r.UID != "" && r.UID != uid {
			return keys.Key{}, time.Time{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
		}
		cur, old, err := s.keyRecord(ctx, orgID, uid)
		if err != nil {
			return keys.Key{}, time.Time{}, err
		}
		k, until, err := r.Apply(old)
		if err != nil {
			return keys.Key{}, time.Time{}, err
		}
		ref := orgID + "/" + uid
		ok, err := s.rdb.SetNX(ctx, hashIndexKey(k.SecretHash.String()), ref, 0).Result()
		if err != nil {
			return keys.Key{}, time.Time{}, fail("indexing new secret", err)
		}
		if !ok {
			got, err := s.rdb.Get(ctx, hashIndexKey(k.SecretHash.String())).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return keys.Key{}, time.Time{}, fail("reading secret index", err)
			}
			if got != ref {
				return keys.Key{}, time.Time{}, fmt.Errorf("secret hash of key %q: %w", name, keys.ErrConflict)
			}
		}
		b, err := encodeKey(k)
		if err != nil {
			return keys.Key{}, time.Time{}, err
		}
		n, err := replaceKeyScript.Run(ctx, s.rdb, []string{keyKey(orgID, uid)}, cur, b).Int64()
		if err != nil {
			return keys.Key{}, time.Time{}, fail("running replace-key script", err)
		}
		switch n {
		case replyOK:
		case replyNotFound:
			_ = s.rdb.Del(ctx, hashIndexKey(k.SecretHash.String())).Err() // an orphan entry is ignored anyway
			return keys.Key{}, time.Time{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
		case replyChangedSince:
			continue
		default:
			return keys.Key{}, time.Time{}, fmt.Errorf("replace-key script: unexpected reply %d", n)
		}
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if old.Previous != nil && old.Previous.Hash != k.SecretHash {
				p.Del(ctx, hashIndexKey(old.Previous.Hash.String()))
			}
			if k.Previous != nil {
				p.PExpire(ctx, hashIndexKey(old.SecretHash.String()), until.Sub(r.Now)+indexSlack)
			} else {
				p.Del(ctx, hashIndexKey(old.SecretHash.String()))
			}
			return nil
		}) // best effort, see above
		return k, until, s.publish(ctx, keys.Revocation{OrgID: orgID, KeyUID: uid})
	}
	return keys.Key{}, time.Time{}, fmt.Errorf("key %q kept changing concurrently: %w", name, keys.ErrConflict)
}

// touchChunk bounds the keys one touch script handles, so no script run
// holds Redis for long.
const touchChunk = 256

// TouchKeys moves last_used_at of keys forward, to the millisecond: one
// script per organization (and per 256 keys), all in one pipeline, so one
// round trip on a single server and one per node on a Cluster. Each script
// runs a few multi-key commands (MGET, MSET, and EXISTS for keys without a
// time yet; see touch_keys.lua), so a flush costs Redis three or four
// commands per organization, whatever the number of keys. Keys that no
// longer exist are skipped.
func (s *Store) TouchKeys(ctx context.Context, used map[keys.KeyRef]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	byOrg := make(map[string][]keys.KeyRef)
	for ref := range used {
		if keys.ValidateOrgID(ref.OrgID) != nil || ref.UID == "" {
			continue
		}
		byOrg[ref.OrgID] = append(byOrg[ref.OrgID], ref)
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for orgID, refs := range byOrg {
			for len(refs) > 0 {
				chunk := refs[:min(len(refs), touchChunk)]
				refs = refs[len(chunk):]
				ks := make([]string, 2*len(chunk))
				args := make([]any, len(chunk))
				for i, ref := range chunk {
					ks[i], ks[len(chunk)+i] = keyKey(orgID, ref.UID), usedKey(orgID, ref.UID)
					args[i] = used[ref].UnixMilli()
				}
				touchKeysScript.Eval(ctx, p, ks, args...)
			}
		}
		return nil
	})
	if err != nil {
		return fail("recording key uses", err)
	}
	return nil
}

// SetSealedSecret replaces the sealed secret of a key. A concurrent change of
// the same key makes it fail with keys.ErrConflict rather than lose that
// change.
func (s *Store) SetSealedSecret(ctx context.Context, uid string, sealed []byte) error {
	orgID, err := s.rdb.Get(ctx, uidIndexKey(uid)).Result()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("key %s: %w", uid, keys.ErrNotFound)
	}
	if err != nil {
		return fail("reading key index", err)
	}
	cur, k, err := s.keyRecord(ctx, orgID, uid)
	if err != nil {
		return err
	}
	k.SealedSecret = slices.Clone(sealed)
	b, err := encodeKey(k)
	if err != nil {
		return err
	}
	n, err := replaceKeyScript.Run(ctx, s.rdb, []string{keyKey(orgID, uid)}, cur, b).Int64()
	if err != nil {
		return fail("running replace-key script", err)
	}
	switch n {
	case replyOK:
		return nil
	case replyNotFound:
		return fmt.Errorf("key %s: %w", uid, keys.ErrNotFound)
	case replyChangedSince:
		return fmt.Errorf("key %s changed concurrently: %w", uid, keys.ErrConflict)
	default:
		return fmt.Errorf("replace-key script: unexpected reply %d", n)
	}
}

// KeyByHash returns the key whose current secret, or previous secret within
// its grace by the store's clock, hashes to h.
func (s *Store) KeyByHash(ctx context.Context, h keys.SecretHash) (keys.Key, error) {
	ref, err := s.rdb.Get(ctx, hashIndexKey(h.String())).Result()
	if errors.Is(err, redis.Nil) {
		return keys.Key{}, fmt.Errorf("key by hash: %w", keys.ErrNotFound)
	}
	if err != nil {
		return keys.Key{}, fail("reading key hash index", err)
	}
	i := strings.LastIndexByte(ref, '/')
	if i < 0 {
		return keys.Key{}, fmt.Errorf("key hash index: malformed entry %q", ref)
	}
	_, k, err := s.keyRecord(ctx, ref[:i], ref[i+1:])
	if err != nil {
		return keys.Key{}, err
	}
	if ok, _ := k.MatchHash(h, s.now()); !ok {
		return keys.Key{}, fmt.Errorf("key by hash: %w", keys.ErrNotFound)
	}
	return k, nil
}

// KeyByName returns the key called name in an organization.
func (s *Store) KeyByName(ctx context.Context, orgID, name string) (keys.Key, error) {
	uid, err := s.uidByName(ctx, orgID, name)
	if err != nil {
		return keys.Key{}, err
	}
	_, k, err := s.keyRecord(ctx, orgID, uid)
	return k, err
}

// uidByName returns the uid of the key called name in an organization.
func (s *Store) uidByName(ctx context.Context, orgID, name string) (string, error) {
	uid, err := s.rdb.HGet(ctx, keyNamesKey(orgID), name).Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	if err != nil {
		return "", fail("reading key name", err)
	}
	return uid, nil
}

// KeyByUID returns the key with the given access_key.
func (s *Store) KeyByUID(ctx context.Context, uid string) (keys.Key, error) {
	orgID, err := s.rdb.Get(ctx, uidIndexKey(uid)).Result()
	if errors.Is(err, redis.Nil) {
		return keys.Key{}, fmt.Errorf("key %s: %w", uid, keys.ErrNotFound)
	}
	if err != nil {
		return keys.Key{}, fail("reading key index", err)
	}
	_, k, err := s.keyRecord(ctx, orgID, uid)
	return k, err
}

// keyRecord reads the record of a key, raw and decoded, with its last-used
// time: one MGET of two keys in one slot.
func (s *Store) keyRecord(ctx context.Context, orgID, uid string) (string, keys.Key, error) {
	vs, err := s.rdb.MGet(ctx, keyKey(orgID, uid), usedKey(orgID, uid)).Result()
	if err != nil {
		return "", keys.Key{}, fail("reading key", err)
	}
	if len(vs) != 2 {
		return "", keys.Key{}, fmt.Errorf("reading key: unexpected reply of %d values", len(vs))
	}
	if vs[0] == nil {
		return "", keys.Key{}, fmt.Errorf("key %s: %w", uid, keys.ErrNotFound)
	}
	v, ok := vs[0].(string)
	if !ok {
		return "", keys.Key{}, fmt.Errorf("reading key: unexpected reply %T", vs[0])
	}
	k, err := decodeKey(v, vs[1])
	return v, k, err
}

// encodeKey renders a key record. last_used_at is not part of it: it lives
// in its own key (usedKey).
func encodeKey(k keys.Key) (string, error) {
	k.LastUsedAt = nil
	b, err := json.Marshal(k)
	if err != nil {
		return "", fmt.Errorf("encoding key: %w", err)
	}
	return string(b), nil
}

// decodeKey decodes a key record and its last-used time (nil, or Unix
// milliseconds as MGET returns them).
func decodeKey(record string, used any) (keys.Key, error) {
	k, err := decode[keys.Key]("key", record)
	if err != nil {
		return keys.Key{}, err
	}
	k.LastUsedAt = nil
	if str, ok := used.(string); ok {
		ms, err := strconv.ParseInt(str, 10, 64)
		if err != nil {
			return keys.Key{}, fmt.Errorf("decoding last-used time of key %s: %w", k.UID, err)
		}
		t := time.UnixMilli(ms).UTC()
		k.LastUsedAt = &t
	}
	return k, nil
}

// Keys lists the keys of an organization ordered by creation time, then name.
func (s *Store) Keys(ctx context.Context, orgID string) ([]keys.Key, error) {
	names, err := s.rdb.HGetAll(ctx, keyNamesKey(orgID)).Result()
	if err != nil {
		return nil, fail("listing keys", err)
	}
	if len(names) == 0 {
		return nil, nil
	}
	ks := make([]string, 0, 2*len(names))
	for _, uid := range names {
		ks = append(ks, keyKey(orgID, uid), usedKey(orgID, uid))
	}
	// One slot: MGET is valid on a Cluster.
	vs, err := s.rdb.MGet(ctx, ks...).Result()
	if err != nil {
		return nil, fail("reading keys", err)
	}
	if len(vs) != len(ks) {
		return nil, fmt.Errorf("reading keys: unexpected reply of %d values for %d keys", len(vs), len(ks))
	}
	out := make([]keys.Key, 0, len(names))
	for i := 0; i < len(vs); i += 2 {
		if vs[i] == nil {
			continue // name without record
		}
		str, ok := vs[i].(string)
		if !ok {
			return nil, fmt.Errorf("reading keys: unexpected reply %T", vs[i])
		}
		k, err := decodeKey(str, vs[i+1])
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b keys.Key) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// DeleteKey removes the key called name from an organization, returns it and
// publishes its revocation. The secret-hash and uid indices are removed first,
// so from that moment the key cannot authenticate even if the rest fails.
// When the revocation cannot be published the key stays deleted, it is
// returned and the error wraps keys.ErrUnavailable.
func (s *Store) DeleteKey(ctx context.Context, orgID, name string) (keys.Key, error) {
	uid, err := s.rdb.HGet(ctx, keyNamesKey(orgID), name).Result()
	if errors.Is(err, redis.Nil) {
		return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	if err != nil {
		return keys.Key{}, fail("reading key name", err)
	}
	_, k, err := s.keyRecord(ctx, orgID, uid)
	if err != nil {
		return keys.Key{}, err
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, hashIndexKey(k.SecretHash.String()))
		if k.Previous != nil {
			p.Del(ctx, hashIndexKey(k.Previous.Hash.String()))
		}
		p.Del(ctx, uidIndexKey(uid))
		return nil
	})
	if err != nil {
		return keys.Key{}, fail("removing key indices", err)
	}
	v, err := deleteKeyScript.Run(ctx, s.rdb,
		[]string{keyNamesKey(orgID), allocKey(orgID), keyKey(orgID, uid), usedKey(orgID, uid)},
		name, uid,
	).Text()
	if errors.Is(err, redis.Nil) {
		// Deleted meanwhile by someone else.
		return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	if err != nil {
		return keys.Key{}, fail("running delete-key script", err)
	}
	deleted, err := decodeKey(v, nil)
	if err != nil {
		return keys.Key{}, err
	}
	deleted.LastUsedAt = k.LastUsedAt
	return deleted, s.publish(ctx, keys.Revocation{OrgID: orgID, KeyUID: uid})
}

// ----- revocations -----

// publish stamps r with the clock, appends it to the change log and
// publishes it on the pub/sub channel, which sidecars older than the log
// listen to. The published copy says whether the log has it (Logged): when
// the append failed, followers of the log apply the published one instead.
func (s *Store) publish(ctx context.Context, r keys.Revocation) error {
	r.PublishedAt = s.now()
	r.Logged = true
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding revocation: %w", err)
	}
	logErr := s.logChange(ctx, b)
	if logErr != nil {
		r.Logged = false
		b, _ = json.Marshal(r)
	}
	if err := s.rdb.Publish(ctx, revocationsChannel, b).Err(); err != nil {
		return fmt.Errorf("%w: %w", keys.ErrNotBroadcast, fail("publishing revocation", err))
	}
	if logErr != nil {
		return fmt.Errorf("%w: %w", keys.ErrNotBroadcast, fail("logging change", logErr))
	}
	return nil
}

// Watch subscribes to the revocation channel and calls fn, on Watch's own
// goroutine, for every revocation, until ctx is done (it then returns
// ctx.Err()) or the subscription breaks (an error wrapping
// keys.ErrUnavailable). It delivers nothing before Redis has confirmed the
// subscription. When the channel is quiet it pings the server every health
// check interval, and a server that answers nothing for two intervals — or
// cannot be reached at all — ends the watch. A message that cannot be
// decoded also ends it, so the caller treats it as a gap rather than miss a
// revocation.
//
// The client calls that may block (dialing, the handshake, reads) run on a
// helper goroutine, because the client bounds them by its own timeouts
// rather than by ctx. Watch never waits for them: when it returns, that
// goroutine closes the subscription and ends as soon as the client lets it.
func (s *Store) Watch(ctx context.Context, fn func(keys.Revocation)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sub := s.rdb.Subscribe(ctx) // no channel yet: does not connect
	msgs := make(chan any)
	errc := make(chan error, 1)
	quit := make(chan struct{})
	defer close(quit)
	go s.receive(ctx, sub, msgs, errc, quit)

	silence := 2 * s.healthCheck
	timer := time.NewTimer(silence)
	defer timer.Stop()
	confirmed := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !confirmed {
				return fail("subscribing to revocations", err)
			}
			return fail("watching revocations", err)
		case <-timer.C:
			return fmt.Errorf("watching revocations: %w: no answer from redis within %s", keys.ErrUnavailable, silence)
		case msg := <-msgs:
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" && m.Channel == revocationsChannel {
					confirmed = true
				}
			case *redis.Pong:
			case *redis.Message:
				if confirmed && m.Channel == revocationsChannel {
					var r keys.Revocation
					if err := json.Unmarshal([]byte(m.Payload), &r); err != nil {
						return fmt.Errorf("decoding revocation: %w", err)
					}
					fn(r)
				}
			default:
				return fmt.Errorf("watching revocations: unexpected message %T", msg)
			}
			timer.Reset(silence)
		}
	}
}

// receive subscribes sub to the revocation channel and passes on every
// message, pinging the server whenever a read waits a whole health check
// interval. It reports the first error on errc and stops, closing sub, on an
// error or once quit is closed.
func (s *Store) receive(ctx context.Context, sub *redis.PubSub, msgs chan<- any, errc chan<- error, quit <-chan struct{}) {
	defer func() { _ = sub.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = sub.Close() }) // interrupts a blocked read
	defer stop()
	if err := sub.Subscribe(ctx, revocationsChannel); err != nil {
		errc <- err
		return
	}
	for {
		msg, err := sub.ReceiveTimeout(ctx, s.healthCheck)
		select {
		case <-quit:
			return
		default:
		}
		if isTimeout(err) && ctx.Err() == nil {
			if err := sub.Ping(ctx); err != nil {
				errc <- err
				return
			}
			continue
		}
		if err != nil {
			errc <- err
			return
		}
		select {
		case msgs <- msg:
		case <-quit:
			return
		}
	}
}

// ----- helpers -----

// maxArg renders a per-key maximum as a script argument: "" for none.
func maxArg(max *int64) string {
	if max == nil {
		return ""
	}
	return strconv.FormatInt(*max, 10)
}

func decode[T any](what, v string) (T, error) {
	var out T
	if err := json.Unmarshal([]byte(v), &out); err != nil {
		return out, fmt.Errorf("decoding %s record: %w", what, err)
	}
	return out, nil
}

// fail wraps err with what the store was doing, and with keys.ErrUnavailable
// when it means Redis could not be reached or could not answer in time.
func fail(doing string, err error) error {
	if redisfail.Unavailable(err) {
		return fmt.Errorf("%s: %w: %w", doing, keys.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
