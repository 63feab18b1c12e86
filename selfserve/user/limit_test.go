package user_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/sidecar"
)

// TestLoginFloodIsLimitedPerUsername: 40 wrong passwords for one username
// at once are mostly refused with 429 before any password check, while
// another user logs in, and the user whose name is guessed still logs in
// from an address that logged in before.
func TestLoginFloodIsLimitedPerUsername(t *testing.T) {
	limit, _ := guard.ParseFailLimit("5/1m")
	trusted, _ := guard.ParseTrustedProxies("127.0.0.1")
	e := sidecartest.New(t, sidecar.Options{LoginFailLimit: limit, TrustedProxies: trusted})
	e.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "p", "period": "month", "max_api_requests": 100}, 201, nil)
	e.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"name": "A", "plan_id": 1, "username": "alice", "password": "alice-pw"}, 201, nil)
	e.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"name": "B", "plan_id": 1, "username": "bob", "password": "bob-pw"}, 201, nil)
	srv := httptest.NewServer(e.Data)
	t.Cleanup(srv.Close)
	client := &http.Client{Timeout: 30 * time.Second}
	login := func(user, pw, from string) (int, string) {
		form := url.Values{"username": {user}, "password": {pw}, "access_level": {"basic"}}
		req, _ := http.NewRequest("POST", srv.URL+"/user/create_apikey", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Forwarded-For", from)
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := login("alice", "alice-pw", "198.51.100.1"); status != 200 {
		t.Fatalf("alice's first login: %d %s", status, body)
	}

	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _ := login("alice", "guess", "203.0.113."+string(rune('1'+i%9)))
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		}()
	}
	if status, body := login("bob", "bob-pw", "198.51.100.2"); status != 200 {
		t.Errorf("bob during the flood: %d %s", status, body)
	}
	wg.Wait()
	if statuses[429] < 30 || statuses[200] != 0 {
		t.Errorf("40 wrong passwords for alice: %v, want mostly 429", statuses)
	}
	if status, body := login("alice", "alice-pw", "198.51.100.1"); status != 200 {
		t.Errorf("alice from her own address after the flood: %d %s", status, body)
	}
	if status, body := login("alice", "alice-pw", "203.0.113.9"); status != 429 || !strings.Contains(body, "Too many failed authentications") {
		t.Errorf("alice's password from the guessing address: %d %s, want 429", status, body)
	}
}

// TestLoginSprayIsLimitedPerAddress: wrong passwords for many usernames
// from one address are failed authentications of that address: past
// KEYGATE_AUTH_FAIL_LIMIT it gets 429 before any password check, while
// another address logs in.
func TestLoginSprayIsLimitedPerAddress(t *testing.T) {
	limit, _ := guard.ParseFailLimit("3/1m")
	trusted, _ := guard.ParseTrustedProxies("127.0.0.1")
	e := sidecartest.New(t, sidecar.Options{FailLimit: limit, TrustedProxies: trusted})
	e.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "p", "period": "month", "max_api_requests": 100}, 201, nil)
	e.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"name": "B", "plan_id": 1, "username": "bob", "password": "bob-pw"}, 201, nil)
	srv := httptest.NewServer(e.Data)
	t.Cleanup(srv.Close)
	login := func(user, pw, from string) int {
		form := url.Values{"username": {user}, "password": {pw}, "access_level": {"basic"}}
		req, _ := http.NewRequest("POST", srv.URL+"/user/create_apikey", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Forwarded-For", from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	var got []int
	for i := range 6 {
		got = append(got, login("user"+strconv.Itoa(i), "guess", "203.0.113.5"))
	}
	if want := []int{403, 403, 403, 429, 429, 429}; !slices.Equal(got, want) {
		t.Errorf("six usernames guessed from one address: %v, want %v", got, want)
	}
	if s := login("bob", "bob-pw", "198.51.100.2"); s != 200 {
		t.Errorf("bob from another address: %d", s)
	}
}
