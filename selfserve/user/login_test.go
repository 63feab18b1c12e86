package user

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/quota/memcounter"
)

// TestLoginFailuresCostTheSame checks the seed 003 login: a wrong password
// and an unknown user give the same error and both pay for a password hash,
// so neither the answer nor its time tells whether the user exists.
func TestLoginFailuresCostTheSame(t *testing.T) {
	e := newLoginEnv(t)
	hash, err := keys.HashPassword("right")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.store.CreateOrg(ctx, keys.Org{ID: "org-login", Name: "L", PlanID: 1, Username: "alice", PasswordHash: hash}); err != nil {
		t.Fatal(err)
	}
	login := func(user, pw string) (time.Duration, error) {
		start := time.Now()
		_, err := e.api.userLogin(ctx, &listener.Writer{}, netip.Addr{}, user, pw)
		return time.Since(start), err
	}
	if _, err := login("alice", "right"); err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	// The fastest of a few runs of each: scheduling noise only adds time.
	fastest := func(user, pw string) (time.Duration, gate.Problem, string) {
		best := time.Duration(1<<63 - 1)
		var p gate.Problem
		var id string
		for range 3 {
			d, err := login(user, pw)
			if err == nil {
				t.Fatalf("%s/%s accepted", user, pw)
			}
			p, id = gate.Classify(err, e.now), userErrorID(err, gate.Classify(err, e.now))
			best = min(best, d)
		}
		return best, p, id
	}
	wrong, pWrong, idWrong := fastest("alice", "wrong")
	unknown, pUnknown, idUnknown := fastest("nobody", "wrong")
	if pWrong != pUnknown || idWrong != idUnknown || pWrong.Status != http.StatusForbidden {
		t.Errorf("wrong password → %+v %s; unknown user → %+v %s; want one 403 answer", pWrong, idWrong, pUnknown, idUnknown)
	}
	// One argon2id run is milliseconds; a lookup without it is microseconds.
	// A factor of 4 either way leaves room for noise and none for a skipped hash.
	if unknown*4 < wrong || wrong*4 < unknown {
		t.Errorf("unknown user took %v, wrong password %v: one of them skips the password hash", unknown, wrong)
	}
	// An over-long password is hashed too (truncated), not refused early.
	long := make([]byte, keys.MaxPasswordLen+10)
	for i := range long {
		long[i] = 'x'
	}
	if d, err := login("alice", string(long)); err == nil || d*4 < wrong {
		t.Errorf("over-long password: %v after %v (wrong password takes %v)", err, d, wrong)
	}
	var ue *userError
	if _, err := login("", ""); !errors.As(err, &ue) || ue.id != userErrUnauthorized {
		t.Errorf("empty login: %v", err)
	}
}

// TestLoginsAreBounded: password checks beyond maxConcurrentLogins wait,
// and give up with 503 when their context ends instead of piling up
// argon2id's memory.
func TestLoginsAreBounded(t *testing.T) {
	e := newLoginEnv(t)
	for range maxConcurrentLogins {
		e.api.logins <- struct{}{} // every slot taken
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := e.api.userLogin(ctx, &listener.Writer{}, netip.Addr{}, "alice", "pw")
	if p := gate.Classify(err, e.now); !errors.Is(err, gate.ErrBusy) || p.Status != http.StatusServiceUnavailable || p.RetryAfter == 0 {
		t.Fatalf("login with every slot taken: %v → %+v, want 503 with Retry-After", err, p)
	}
	for range maxConcurrentLogins {
		<-e.api.logins
	}
	if _, err := e.api.userLogin(context.Background(), &listener.Writer{}, netip.Addr{}, "alice", "pw"); errors.Is(err, gate.ErrBusy) {
		t.Fatal("login still busy with free slots")
	}
}

// loginEnv is the seed 003 API on the in-memory store with a fixed clock.
type loginEnv struct {
	api   *API
	store *memstore.Store
	now   time.Time
}

func newLoginEnv(t *testing.T) *loginEnv {
	t.Helper()
	e := &loginEnv{store: memstore.New(), now: time.Unix(1700000000, 0)}
	clock := func() time.Time { return e.now }
	auth := keys.NewAuthenticator(e.store, keys.AuthOptions{Now: clock})
	counter := memcounter.New()
	e.api = New(Options{
		Gate:   gate.New(gate.Options{Auth: auth, Counter: counter, Now: clock}),
		Manage: manage.New(manage.Options{Store: e.store, Auth: auth, Counter: counter, Now: clock}),
	})
	return e
}
