// Package memstore is the in-memory keys.Store: one process, nothing
// persisted. It is the embedded store keygate uses when no Redis is
// configured, and the reference the Redis store is compared with through
// keys/storetest.
package memstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keygate/keygate/keys"
)

var _ keys.Store = (*Store)(nil)

// watchBuffer is how many revocations a watcher may fall behind before it is
// dropped (its Watch returns an error, as a Redis subscriber that cannot keep
// up is disconnected).
const watchBuffer = 1024

// errWatcherTooSlow ends the Watch of a watcher whose buffer overflowed.
var errWatcherTooSlow = errors.New("watcher fell behind: revocations were dropped")

// Store is an in-memory keys.Store. It is safe for concurrent use: one
// RWMutex guards all state, and values are copied in and out so callers never
// share memory with the store. The zero value is not usable; call New.
type Store struct {
	now func() time.Time

	mu        sync.RWMutex
	plans     map[int64]keys.Plan
	orgs      map[string]keys.Org
	usernames map[string]string            // username → org id
	keys      map[string]keys.Key          // uid → key
	byHash    map[keys.SecretHash]string   // secret hash → uid
	byName    map[string]map[string]string // org id → name → uid
	// orgIDs are the organization ids in order and orgTerms the
	// keys.SearchCursor of every search term of every organization, in
	// order: FindOrgs reads a page from a binary search on.
	orgIDs   []string
	orgTerms []string
	watchers map[*watcher]struct{}
	changes  changeLog
}

// watcher is one running Watch. Revocations are queued on ch without ever
// blocking the writer; when ch is full the watcher is marked lost and its
// Watch returns.
type watcher struct {
	ch       chan keys.Revocation
	lost     chan struct{}
	lostOnce sync.Once
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock that stamps revocations and ends rotation grace
// periods (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// New returns an empty Store.
func New(opts ...Option) *Store {
	s := &Store{
		now:       time.Now,
		plans:     make(map[int64]keys.Plan),
		orgs:      make(map[string]keys.Org),
		usernames: make(map[string]string),
		keys:      make(map[string]keys.Key),
		byHash:    make(map[keys.SecretHash]string),
		byName:    make(map[string]map[string]string),
		watchers:  make(map[*watcher]struct{}),
		changes:   newChangeLog(),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Ping always succeeds.
func (s *Store) Ping(context.Context) error { return nil }

// CreatePlan adds a plan; keys.ErrConflict when its id is taken.
func (s *Store) CreatePlan(_ context.Context, p keys.Plan) error {
	if err := p.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.plans[p.ID]; ok {
		return fmt.Errorf("plan %d: %w", p.ID, keys.ErrConflict)
	}
	s.plans[p.ID] = copyPlan(p)
	return nil
}

// Plan returns the plan with the given id.
func (s *Store) Plan(_ context.Context, id int64) (keys.Plan, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.plans[id]
	if !ok {
		return keys.Plan{}, fmt.Errorf("plan %d: %w", id, keys.ErrNotFound)
	}
	return copyPlan(p), nil
}

// Plans lists every plan ordered by id.
func (s *Store) Plans(context.Context) ([]keys.Plan, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]keys.Plan, 0, len(s.plans))
	for _, p := range s.plans {
		out = append(out, copyPlan(p))
	}
	slices.SortFunc(out, func(a, b keys.Plan) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// UpdatePlan applies p to a plan and revokes the principals of the
// organizations on it.
func (s *Store) UpdatePlan(_ context.Context, id int64, p keys.PlanPatch) (keys.Plan, error) {
	if err := p.Validate(); err != nil {
		return keys.Plan{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pl, ok := s.plans[id]
	if !ok {
		return keys.Plan{}, fmt.Errorf("plan %d: %w", id, keys.ErrNotFound)
	}
	pl = p.Apply(pl)
	s.plans[id] = copyPlan(pl)
	s.publish(keys.Revocation{PlanID: id})
	return copyPlan(pl), nil
}

// CreateOrg adds an organization; keys.ErrConflict when its id or username is
// taken.
func (s *Store) CreateOrg(_ context.Context, o keys.Org) error {
	if err := o.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.orgs[o.ID]; ok {
		return fmt.Errorf("organization %s: %w", o.ID, keys.ErrConflict)
	}
	if o.Username != "" {
		if _, ok := s.usernames[o.Username]; ok {
			return fmt.Errorf("username %q: %w", o.Username, keys.ErrConflict)
		}
		s.usernames[o.Username] = o.ID
	}
	s.orgs[o.ID] = copyOrg(o)
	s.orgIDs = insertSorted(s.orgIDs, o.ID)
	for _, t := range o.SearchTerms() {
		s.orgTerms = insertSorted(s.orgTerms, keys.SearchCursor(t, o.ID))
	}
	return nil
}

// insertSorted adds v to the sorted list (unless it is there).
func insertSorted(list []string, v string) []string {
	i, found := slices.BinarySearch(list, v)
	if found {
		return list
	}
	return slices.Insert(list, i, v)
}

// removeSorted removes v from the sorted list (if it is there).
func removeSorted(list []string, v string) []string {
	if i, found := slices.BinarySearch(list, v); found {
		return slices.Delete(list, i, i+1)
	}
	return list
}

// Org returns the organization with the given id.
func (s *Store) Org(_ context.Context, id string) (keys.Org, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.orgs[id]
	if !ok {
		return keys.Org{}, fmt.Errorf("organization %s: %w", id, keys.ErrNotFound)
	}
	return copyOrg(o), nil
}

// OrgByUsername returns the organization whose login is username.
func (s *Store) OrgByUsername(_ context.Context, username string) (keys.Org, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.usernames[username]
	if !ok {
		return keys.Org{}, fmt.Errorf("username %q: %w", username, keys.ErrNotFound)
	}
	return copyOrg(s.orgs[id]), nil
}

// Orgs lists every organization ordered by id.
func (s *Store) Orgs(context.Context) ([]keys.Org, error) {
	return s.listOrgs(func(keys.Org) bool { return true }), nil
}

// FindOrgs returns one page of organizations (see keys.Store): a binary
// search in the sorted ids or search terms, then the page; an organization
// found by several terms is listed under its first (keys.Org.SearchTerm).
func (s *Store) FindOrgs(_ context.Context, q keys.OrgQuery) (keys.OrgPage, error) {
	q, err := q.Normalize()
	if err != nil {
		return keys.OrgPage{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var page keys.OrgPage
	if q.Search == "" {
		i, found := slices.BinarySearch(s.orgIDs, q.After)
		if found {
			i++
		}
		for _, id := range s.orgIDs[i:] {
			if len(page.Orgs) == q.Limit {
				page.Next = page.Orgs[len(page.Orgs)-1].ID
				break
			}
			page.Orgs = append(page.Orgs, copyOrg(s.orgs[id]))
		}
		return page, nil
	}
	from := q.Search
	if q.After != "" {
		from = q.After
	}
	i, found := slices.BinarySearch(s.orgTerms, from)
	if found && q.After != "" {
		i++
	}
	var last string
	for _, c := range s.orgTerms[i:] {
		if !strings.HasPrefix(c, q.Search) {
			break
		}
		term, id, _ := keys.SplitSearchCursor(c)
		o := s.orgs[id]
		if t, _ := o.SearchTerm(q.Search); t != term {
			continue // listed under another of its terms
		}
		if len(page.Orgs) == q.Limit {
			page.Next = last
			break
		}
		page.Orgs, last = append(page.Orgs, copyOrg(o)), c
	}
	return page, nil
}

// SubOrgs lists the organizations created by partner, ordered by id.
func (s *Store) SubOrgs(_ context.Context, partnerID string) ([]keys.Org, error) {
	return s.listOrgs(func(o keys.Org) bool { return o.PartnerID == partnerID }), nil
}

func (s *Store) listOrgs(keep func(keys.Org) bool) []keys.Org {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []keys.Org
	for _, o := range s.orgs {
		if keep(o) {
			out = append(out, copyOrg(o))
		}
	}
	slices.SortFunc(out, func(a, b keys.Org) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// UpdateOrg replaces an existing organization and revokes all its keys. Its
// username cannot change (a *keys.InvalidError).
func (s *Store) UpdateOrg(_ context.Context, o *keys.Org) error {
	if err := o.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.orgs[o.ID]
	if !ok {
		return fmt.Errorf("organization %s: %w", o.ID, keys.ErrNotFound)
	}
	if o.Username != old.Username {
		return &keys.InvalidError{Field: "username", Reason: "cannot be changed"}
	}
	if o.Revision != old.Revision {
		return fmt.Errorf("organization %s changed concurrently: %w", o.ID, keys.ErrConflict)
	}
	o.Revision++
	s.orgs[o.ID] = copyOrg(*o)
	for _, t := range old.SearchTerms() {
		s.orgTerms = removeSorted(s.orgTerms, keys.SearchCursor(t, o.ID))
	}
	for _, t := range o.SearchTerms() {
		s.orgTerms = insertSorted(s.orgTerms, keys.SearchCursor(t, o.ID))
	}
	s.publish(keys.Revocation{OrgID: o.ID})
	return nil
}

// CreateKey adds k to its organization under the allocation rule of
// keys.Store. It stores no last-used time and no previous secret.
func (s *Store) CreateKey(_ context.Context, k keys.Key, allocLimit int64) error {
	if err := k.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.orgs[k.OrgID]; !ok {
		return fmt.Errorf("organization %s: %w", k.OrgID, keys.ErrNotFound)
	}
	names := s.byName[k.OrgID]
	if _, ok := names[k.Name]; ok {
		return fmt.Errorf("key %q: %w", k.Name, keys.ErrConflict)
	}
	if _, ok := s.keys[k.UID]; ok {
		return fmt.Errorf("key %s: %w", k.UID, keys.ErrConflict)
	}
	if k.MaxAPIRequests != nil && allocLimit >= 0 && s.allocatedExcept(k.OrgID, "")+*k.MaxAPIRequests > allocLimit {
		return fmt.Errorf("key %q: %w", k.Name, keys.ErrOverAllocated)
	}
	if names == nil {
		names = make(map[string]string)
		s.byName[k.OrgID] = names
	}
	names[k.Name] = k.UID
	k.LastUsedAt, k.Previous = nil, nil
	s.keys[k.UID] = copyKey(k)
	s.byHash[k.SecretHash] = k.UID
	return nil
}

// allocatedExcept sums the per-key maxima of an organization's keys other
// than uid. Called with mu held.
func (s *Store) allocatedExcept(orgID, uid string) int64 {
	var sum int64
	for _, u := range s.byName[orgID] {
		if u == uid {
			continue
		}
		if m := s.keys[u].MaxAPIRequests; m != nil {
			sum += *m
		}
	}
	return sum
}

// UpdateKey applies p to a key, the per-key maximum under the allocation
// rule, and revokes it. A previous secret whose grace has ended is dropped on
// the way.
func (s *Store) UpdateKey(_ context.Context, orgID, name string, p keys.KeyPatch, allocLimit int64) (keys.Key, error) {
	if err := p.Validate(); err != nil {
		return keys.Key{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	uid, ok := s.byName[orgID][name]
	if !ok {
		return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	if m := p.MaxAPIRequests; m.Set && m.Value != nil && allocLimit >= 0 && s.allocatedExcept(orgID, uid)+*m.Value > allocLimit {
		return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrOverAllocated)
	}
	k := p.Apply(s.keys[uid])
	if k.Previous != nil && !k.PreviousValid(s.now()) {
		s.unindexHash(k.Previous.Hash, uid)
		k.Previous = nil
	}
	s.keys[uid] = copyKey(k)
	s.publish(keys.Revocation{OrgID: orgID, KeyUID: uid})
	return copyKey(k), nil
}

// RotateKey gives a key a new secret, keeps the old one for the grace
// period, and revokes it. See keys.Store.
func (s *Store) RotateKey(_ context.Context, orgID, name string, r keys.Rotation) (keys.Key, time.Time, error) {
	if err := r.Validate(); err != nil {
		return keys.Key{}, time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	uid, ok := s.byName[orgID][name]
	if !ok || (r.UID != "" && r.UID != uid) {
		return keys.Key{}, time.Time{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	if other, ok := s.byHash[r.Hash]; ok && other != uid {
		return keys.Key{}, time.Time{}, fmt.Errorf("secret hash of key %q: %w", name, keys.ErrConflict)
	}
	old := s.keys[uid]
	k, until, err := r.Apply(old)
	if err != nil {
		return keys.Key{}, time.Time{}, err
	}
	if old.Previous != nil {
		s.unindexHash(old.Previous.Hash, uid)
	}
	if k.Previous == nil {
		s.unindexHash(old.SecretHash, uid)
	}
	s.byHash[k.SecretHash] = uid
	s.keys[uid] = copyKey(k)
	s.publish(keys.Revocation{OrgID: orgID, KeyUID: uid})
	return copyKey(k), until, nil
}

// unindexHash removes the hash index entry h if it is uid's. Called with mu
// held.
func (s *Store) unindexHash(h keys.SecretHash, uid string) {
	if s.byHash[h] == uid {
		delete(s.byHash, h)
	}
}

// TouchKeys records last_used_at of keys, never moving it backwards, to the
// millisecond like the Redis store.
func (s *Store) TouchKeys(_ context.Context, used map[keys.KeyRef]time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ref, at := range used {
		k, ok := s.keys[ref.UID]
		if !ok || k.OrgID != ref.OrgID {
			continue
		}
		at = at.UTC().Truncate(time.Millisecond)
		if k.LastUsedAt == nil || at.After(*k.LastUsedAt) {
			k.LastUsedAt = &at
			s.keys[ref.UID] = k
		}
	}
	return nil
}

// SetSealedSecret replaces the sealed secret of a key.
func (s *Store) SetSealedSecret(_ context.Context, uid string, sealed []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[uid]
	if !ok {
		return fmt.Errorf("key %s: %w", uid, keys.ErrNotFound)
	}
	k.SealedSecret = slices.Clone(sealed)
	s.keys[uid] = k
	return nil
}

// KeyByHash returns the key whose current secret, or previous secret within
// its grace by the store's clock, hashes to h. The index entry of a previous
// secret whose grace has ended is ignored here and removed by the key's next
// rotation or deletion.
func (s *Store) KeyByHash(_ context.Context, h keys.SecretHash) (keys.Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	uid, ok := s.byHash[h]
	if !ok {
		return keys.Key{}, fmt.Errorf("key by hash: %w", keys.ErrNotFound)
	}
	k := s.keys[uid]
	if ok, _ := k.MatchHash(h, s.now()); !ok {
		return keys.Key{}, fmt.Errorf("key by hash: %w", keys.ErrNotFound)
	}
	return copyKey(k), nil
}

// KeyByName returns the key called name in an organization.
func (s *Store) KeyByName(_ context.Context, orgID, name string) (keys.Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	uid, ok := s.byName[orgID][name]
	if !ok {
		return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	return copyKey(s.keys[uid]), nil
}

// KeyByUID returns the key with the given access_key.
func (s *Store) KeyByUID(_ context.Context, uid string) (keys.Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.keys[uid]
	if !ok {
		return keys.Key{}, fmt.Errorf("key %s: %w", uid, keys.ErrNotFound)
	}
	return copyKey(k), nil
}

// Keys lists the keys of an organization ordered by creation time, then name.
func (s *Store) Keys(_ context.Context, orgID string) ([]keys.Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []keys.Key
	for _, uid := range s.byName[orgID] {
		out = append(out, copyKey(s.keys[uid]))
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
// revokes it.
func (s *Store) DeleteKey(_ context.Context, orgID, name string) (keys.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	uid, ok := s.byName[orgID][name]
	if !ok {
		return keys.Key{}, fmt.Errorf("key %q: %w", name, keys.ErrNotFound)
	}
	k := s.keys[uid]
	delete(s.byName[orgID], name)
	if len(s.byName[orgID]) == 0 {
		delete(s.byName, orgID)
	}
	delete(s.keys, uid)
	s.unindexHash(k.SecretHash, uid)
	if k.Previous != nil {
		s.unindexHash(k.Previous.Hash, uid)
	}
	s.publish(keys.Revocation{OrgID: orgID, KeyUID: uid})
	return copyKey(k), nil
}

// Watch calls fn for every revocation made after it started until ctx is
// done, when it returns ctx.Err(). fn runs on Watch's goroutine with no lock
// held, so it may call back into the store. Writers never wait for a watcher:
// a watcher that falls more than 1024 revocations behind is dropped and its
// Watch returns an error, so its caller knows it missed some.
func (s *Store) Watch(ctx context.Context, fn func(keys.Revocation)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &watcher{ch: make(chan keys.Revocation, watchBuffer), lost: make(chan struct{})}
	s.mu.Lock()
	s.watchers[w] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()
	for {
		// Deliver what is queued before noticing a loss or the end.
		select {
		case r := <-w.ch:
			fn(r)
			continue
		default:
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.lost:
			return errWatcherTooSlow
		case r := <-w.ch:
			fn(r)
		}
	}
}

// publish stamps r, logs it and queues it for every watcher without blocking. Called
// with mu held, so watchers see revocations in the order of the changes.
func (s *Store) publish(r keys.Revocation) {
	r.PublishedAt = s.now()
	r.Logged = true
	s.changes.append(r)
	for w := range s.watchers {
		select {
		case w.ch <- r:
		default:
			w.lostOnce.Do(func() { close(w.lost) })
		}
	}
}

func copyPlan(p keys.Plan) keys.Plan { return p.Clone() }

func copyOrg(o keys.Org) keys.Org { return o.Clone() }

func copyKey(k keys.Key) keys.Key { return k.Clone() }
