package console

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sync"
	"time"
)

// session is one signed-in browser. It lives only in this process: a
// restart signs everyone out.
type session struct {
	csrf    string
	created time.Time
	seen    time.Time
	// flash is shown once by the next page the session loads (a new key's
	// secret, the result of an action), then forgotten.
	flash *flash
}

// flash is a one-time message; Secret is a new key's secret, shown once.
type flash struct {
	Notice    string
	OrgID     string
	KeyName   string
	AccessKey string
	Secret    string
	Until     string
}

// sessions is the bounded server-side session store, keyed by the SHA-256
// of the session id (the id itself is kept nowhere).
type sessions struct {
	mu        sync.Mutex
	m         map[[32]byte]*session
	max       int
	idle, abs time.Duration
}

func newSessions(max int, idle, abs time.Duration) *sessions {
	return &sessions{m: make(map[[32]byte]*session), max: max, idle: idle, abs: abs}
}

// randomToken is 32 random bytes, URL-safe.
func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// create starts a session and returns its id. When the store is full, the
// expired sessions go first, then the one unused the longest.
func (s *sessions) create(now time.Time) (string, error) {
	id, err := randomToken()
	if err != nil {
		return "", err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max {
		var oldest [32]byte
		var oldestSeen time.Time
		for k, v := range s.m {
			if s.expired(v, now) {
				delete(s.m, k)
			} else if oldestSeen.IsZero() || v.seen.Before(oldestSeen) {
				oldest, oldestSeen = k, v.seen
			}
		}
		if len(s.m) >= s.max {
			delete(s.m, oldest)
		}
	}
	s.m[sha256.Sum256([]byte(id))] = &session{csrf: csrf, created: now, seen: now}
	return id, nil
}

func (s *sessions) expired(v *session, now time.Time) bool {
	return now.Sub(v.seen) > s.idle || now.Sub(v.created) > s.abs
}

// get returns the live session with id (and marks it used), or nil.
func (s *sessions) get(id string, now time.Time) *session {
	if id == "" || len(id) > 64 {
		return nil
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.m[k]
	if v == nil {
		return nil
	}
	if s.expired(v, now) {
		delete(s.m, k)
		return nil
	}
	v.seen = now
	return v
}

// setFlash stores a one-time message for the session's next page.
func (s *sessions) setFlash(v *session, f flash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v.flash = &f
}

// takeFlash returns the session's one-time message and forgets it.
func (s *sessions) takeFlash(v *session) *flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := v.flash
	v.flash = nil
	return f
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, sha256.Sum256([]byte(id)))
}

// len is the number of sessions kept.
func (s *sessions) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
