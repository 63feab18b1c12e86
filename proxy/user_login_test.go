package proxy

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
)

// TestLoginFailuresCostTheSame checks the seed 003 login: a wrong password
// and an unknown user give the same error and both pay for a password hash,
// so neither the answer nor its time tells whether the user exists.
func TestLoginFailuresCostTheSame(t *testing.T) {
	e := newSignedEnv(t, nil)
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
		_, err := e.h.userLogin(ctx, &accessRecord{}, user, pw)
		return time.Since(start), err
	}
	if _, err := login("alice", "right"); err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	// The fastest of a few runs of each: scheduling noise only adds time.
	fastest := func(user, pw string) (time.Duration, problem, string) {
		best := time.Duration(1<<63 - 1)
		var p problem
		var id string
		for range 3 {
			d, err := login(user, pw)
			if err == nil {
				t.Fatalf("%s/%s accepted", user, pw)
			}
			p, id = classify(err, e.now), userErrorID(err, classify(err, e.now))
			best = min(best, d)
		}
		return best, p, id
	}
	wrong, pWrong, idWrong := fastest("alice", "wrong")
	unknown, pUnknown, idUnknown := fastest("nobody", "wrong")
	if pWrong != pUnknown || idWrong != idUnknown || pWrong.status != http.StatusForbidden {
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
	e := newSignedEnv(t, nil)
	for range maxConcurrentLogins {
		e.h.logins <- struct{}{} // every slot taken
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := e.h.userLogin(ctx, &accessRecord{}, "alice", "pw")
	if p := classify(err, e.now); !errors.Is(err, errBusy) || p.status != http.StatusServiceUnavailable || p.retryAfter == 0 {
		t.Fatalf("login with every slot taken: %v → %+v, want 503 with Retry-After", err, p)
	}
	for range maxConcurrentLogins {
		<-e.h.logins
	}
	if _, err := e.h.userLogin(context.Background(), &accessRecord{}, "alice", "pw"); errors.Is(err, errBusy) {
		t.Fatal("login still busy with free slots")
	}
}
