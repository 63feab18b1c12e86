package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/keys"
)

var _ keys.ChangeFeed = (*Store)(nil)

// DefaultChangeLogLen is how many changes the change log keeps by default:
// a follower cut off for longer than it takes to make that many changes
// forgets its cache instead of catching up.
const DefaultChangeLogLen = 10000

const (
	// followBatch bounds the changes one read of the log returns.
	followBatch = 512
	// followWait is how long a follow waits for a change before it reads
	// the log again, which confirms the follower's cache.
	followWait = time.Second
)

// WithChangeLogLen sets how many changes the change log keeps (default
// DefaultChangeLogLen).
func WithChangeLogLen(n int64) Option {
	return func(s *Store) {
		if n > 0 {
			s.changeLogLen = n
		}
	}
}

// position is where a follower of the log stands: the id of the last entry
// it read and how many entries the log had taken up to it (the stream's
// entries-added), which tells whether the entry after it was trimmed. Its
// text form, "<id>:<count>", is the keys.ChangeBatch position.
type position struct {
	ms, seq uint64
	added   int64
}

func (p position) id() string {
	return strconv.FormatUint(p.ms, 10) + "-" + strconv.FormatUint(p.seq, 10)
}

func (p position) String() string { return p.id() + ":" + strconv.FormatInt(p.added, 10) }

// before reports whether p's id comes before q's.
func (p position) before(q position) bool {
	return p.ms < q.ms || (p.ms == q.ms && p.seq < q.seq)
}

// parseID parses a stream id "<ms>-<seq>".
func parseID(s string) (position, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return position{}, false
	}
	m, err1 := strconv.ParseUint(ms, 10, 64)
	q, err2 := strconv.ParseUint(seq, 10, 64)
	return position{ms: m, seq: q}, err1 == nil && err2 == nil
}

// parsePosition parses the text form of a position.
func parsePosition(s string) (position, bool) {
	id, n, ok := strings.Cut(s, ":")
	if !ok {
		return position{}, false
	}
	p, ok := parseID(id)
	added, err := strconv.ParseInt(n, 10, 64)
	if !ok || err != nil || added < 0 {
		return position{}, false
	}
	p.added = added
	return p, true
}

// logRead is one reply of readChangesScript.
type logRead struct {
	exists        bool
	added, length int64
	last          position
	entries       []redis.XMessage
}

// readChanges reads the log after id ("" for its end only).
func (s *Store) readChanges(ctx context.Context, id string) (logRead, error) {
	v, err := readChangesScript.Run(ctx, s.rdb, []string{changesKey()}, id, followBatch).Slice()
	if err != nil {
		return logRead{}, err
	}
	if len(v) != 5 {
		return logRead{}, fmt.Errorf("reading the change log: unexpected reply %v", v)
	}
	exists, _ := v[0].(int64)
	added, _ := v[1].(int64)
	length, _ := v[2].(int64)
	lastID, _ := v[3].(string)
	last, ok := parseID(lastID)
	if !ok {
		return logRead{}, fmt.Errorf("reading the change log: bad last id %q", lastID)
	}
	r := logRead{exists: exists == 1, added: added, length: length, last: last}
	raw, _ := v[4].([]any)
	for _, e := range raw {
		pair, ok := e.([]any)
		if len(pair) != 2 || !ok {
			return logRead{}, fmt.Errorf("reading the change log: unexpected entry %v", e)
		}
		id, _ := pair[0].(string)
		fields, _ := pair[1].([]any)
		m := redis.XMessage{ID: id, Values: map[string]any{}}
		for i := 0; i+1 < len(fields); i += 2 {
			if k, ok := fields[i].(string); ok {
				m.Values[k] = fields[i+1]
			}
		}
		r.entries = append(r.entries, m)
	}
	return r, nil
}

// missed reports whether changes after p may be missing from the log: it
// was lost or recreated, or the entry after p was trimmed away.
func (r logRead) missed(p position) bool {
	if !r.exists {
		return p.added > 0 || p.ms > 0 || p.seq > 0
	}
	if r.uncounted() {
		return r.last.before(p)
	}
	return r.last.before(p) || r.added < p.added || p.added < r.added-r.length
}

// uncounted reports a server older than Redis 7, whose streams do not count
// the entries added: it detects a lost log, not a trimmed one.
func (r logRead) uncounted() bool { return r.exists && r.added == 0 && r.length > 0 }

// FollowChanges follows the change log (see keys.ChangeFeed): it reads the
// entries after from together with the log's counters in one script, and
// between reads waits for the next entry with XREAD BLOCK (at most a second,
// so an idle follow still confirms about once a second). A position that
// does not parse, that the log no longer holds, or that a lost or recreated
// log cannot vouch for, starts with a gap at the log's end.
func (s *Store) FollowChanges(ctx context.Context, from string, fn func(keys.ChangeBatch)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pos, ok := parsePosition(from)
	gap := !ok
	for {
		sent := time.Now()
		id := pos.id()
		if gap {
			id = ""
		}
		r, err := s.readChanges(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fail("reading the change log", err)
		}
		batch := keys.ChangeBatch{Gap: gap || r.missed(pos), Current: len(r.entries) < followBatch}
		if batch.Gap {
			// The cache is forgotten: resume at the log's end.
			pos = position{ms: r.last.ms, seq: r.last.seq, added: r.added}
			batch.Current = true
		} else {
			for _, m := range r.entries {
				next, ok := parseID(m.ID)
				raw, _ := m.Values["r"].(string)
				var rv keys.Revocation
				if !ok || json.Unmarshal([]byte(raw), &rv) != nil {
					// A change that cannot be read may be anything.
					batch.Gap = true
					continue
				}
				batch.Revocations = append(batch.Revocations, rv)
				pos = position{ms: next.ms, seq: next.seq, added: pos.added + 1}
			}
			if batch.Current && pos.added != r.added && !r.uncounted() {
				// Entries were counted that this follow did not read.
				batch.Gap = true
			}
			if batch.Gap {
				pos = position{ms: r.last.ms, seq: r.last.seq, added: r.added}
			}
		}
		batch.Pos = pos.String()
		batch.Age = time.Since(sent)
		fn(batch)
		gap = false
		if !batch.Current {
			continue
		}
		if err := s.waitForChange(ctx, pos.id()); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fail("waiting for changes", err)
		}
	}
}

// waitForChange blocks until the log has an entry after id, or followWait
// passes.
func (s *Store) waitForChange(ctx context.Context, id string) error {
	wctx, cancel := context.WithTimeout(ctx, followWait+2*s.healthCheck)
	defer cancel()
	err := s.rdb.XRead(wctx, &redis.XReadArgs{Streams: []string{changesKey(), id}, Count: 1, Block: followWait}).Err()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// logChange appends r (already stamped and marked Logged) to the log.
func (s *Store) logChange(ctx context.Context, b []byte) error {
	return s.rdb.XAdd(ctx, &redis.XAddArgs{Stream: changesKey(), MaxLen: s.changeLogLen, Values: []any{"r", b}}).Err()
}
