package main

// The README's tour and the examples of docs/ run as written: every shell
// block marked <!-- tour --> is run, in one bash session, against a live
// keygate in front of cmd/demo-upstream, and the test checks what a reader
// would see. Only the fixed addresses of the demo are replaced; the admin
// token is the demo's own. Without curl, jq or bash the test skips, unless
// CI=true or KEYGATE_TEST_REDIS=require (as in ./scripts/test.sh), where it
// fails.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// tourMarker precedes a shell block that the test runs.
	tourMarker = "<!-- tour -->"
	// notRunMarker precedes a block with a demo address that is not run.
	notRunMarker = "<!-- not run"
	// The demo's fixed addresses and token, as the documents write them.
	docAdminAddr = "127.0.0.1:9091"
	docDataAddr  = "localhost:8000"
	docToken     = "dev-admin-token"
)

// tourOrder is the order in which the marked blocks run: the README's tour
// first, then the pages that continue from its shell.
var tourOrder = []string{"README.md", "docs/account-api.md", "docs/user-api.md", "docs/partner-api.md",
	"docs/rate-limits.md", "docs/key-lifecycle.md", "docs/cli.md"}

// docBlock is one fenced block of a Markdown document.
type docBlock struct {
	file   string // relative to the repository root
	line   int    // of the opening fence
	marker string // the line before the fence, if it is an HTML comment
	text   string
}

func (b docBlock) name() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// fencedBlocks returns every fenced block of a Markdown document.
func fencedBlocks(file string, doc []byte) ([]docBlock, error) {
	var out []docBlock
	var cur *docBlock
	var body strings.Builder
	prev := ""
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &docBlock{file: file, line: n}
			if strings.HasPrefix(prev, "<!--") {
				cur.marker = prev
			}
			body.Reset()
		case cur != nil && strings.TrimSpace(line) == "```":
			cur.text = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line + "\n")
		}
		if strings.TrimSpace(line) != "" {
			prev = strings.TrimSpace(line)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: fence never closed", file, cur.line)
	}
	return out, sc.Err()
}

// tourBlocks reads README.md and docs/*.md and returns the marked blocks in
// tourOrder. It fails the test for a block with a demo address that is
// neither marked to run nor marked as not run, and for a marked block in a
// file tourOrder does not list.
func tourBlocks(t *testing.T) []docBlock {
	t.Helper()
	root := filepath.Join("..", "..")
	files := []string{"README.md"}
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		files = append(files, filepath.ToSlash(filepath.Join("docs", filepath.Base(p))))
	}
	byFile := map[string][]docBlock{}
	for _, f := range files {
		doc, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		blocks, err := fencedBlocks(f, doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			switch {
			case b.marker == tourMarker:
				if !slices.Contains(tourOrder, f) {
					t.Errorf("%s is marked %s, but %s is not in tourOrder: add it there, in the order a reader runs it", b.name(), tourMarker, f)
				}
				byFile[f] = append(byFile[f], b)
			case strings.HasPrefix(b.marker, notRunMarker):
			case strings.Contains(b.text, docAdminAddr) || strings.Contains(b.text, docDataAddr):
				t.Errorf("%s talks to the demo but is marked neither %s nor %s…-->", b.name(), tourMarker, notRunMarker)
			}
		}
	}
	var out []docBlock
	for _, f := range tourOrder {
		if len(byFile[f]) == 0 {
			t.Errorf("%s has no block marked %s", f, tourMarker)
		}
		out = append(out, byFile[f]...)
	}
	return out
}

// tourTools returns the paths of the tools the blocks use.
func tourTools(t *testing.T) map[string]string {
	t.Helper()
	require := os.Getenv("CI") == "true" || os.Getenv("KEYGATE_TEST_REDIS") == "require"
	out := map[string]string{}
	for _, name := range []string{"bash", "curl", "jq", "go"} {
		p, err := exec.LookPath(name)
		if err != nil {
			if require {
				t.Fatalf("%s not found on PATH (./scripts/test.sh installs it); CI=true or KEYGATE_TEST_REDIS=require make this a failure", name)
			}
			t.Skipf("%s not found on PATH (apt-get install curl jq; set KEYGATE_TEST_REDIS=require to fail instead)", name)
		}
		out[name] = p
	}
	return out
}

// startDemoUpstream builds cmd/demo-upstream and runs it on a free loopback
// port until the test ends; it returns the address.
func startDemoUpstream(t *testing.T, goBin string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demo-upstream")
	if out, err := exec.Command(goBin, "build", "-o", bin, "../demo-upstream").CombinedOutput(); err != nil {
		t.Fatalf("building cmd/demo-upstream: %v\n%s", err, out)
	}
	// The upstream takes an address, not a socket: pick a free port, and
	// pick again if another process took it in between.
	for attempt := 0; attempt < 3; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cmd := exec.Command(bin, "-addr", addr)
		var logs syncBuffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting demo-upstream: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if waitListening(addr, exited, 10*time.Second) {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return addr
		}
		_ = cmd.Process.Kill()
		<-exited
		t.Logf("demo-upstream on %s did not come up: %s", addr, logs.String())
	}
	t.Fatal("demo-upstream did not start")
	return ""
}

// waitListening reports whether addr accepts connections before the process
// exits or the timeout passes.
func waitListening(addr string, exited <-chan struct{}, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return false
}

// tourSection is what one block (or one of the test's probes) printed.
type tourSection struct {
	name     string
	stdout   string
	statuses []int // of every curl call, in the order they ended
}

// The script marks each section on both streams; the curl wrapper reports
// each call's status on stderr, so the commands' own output is untouched.
const (
	sectionPrefix = "@@tour-section "
	statusPrefix  = "@@tour-status "
	curlWrapper   = `curl() { command curl -q -w '%{stderr}` + statusPrefix + `%{http_code} %{url_effective}\n' "$@"; }` + "\n"
)

// runTour runs the sections in one bash session and splits what they printed.
func runTour(t *testing.T, bash string, env []string, names, scripts []string, gateLogs func() string) map[string]tourSection {
	t.Helper()
	var sb strings.Builder
	sb.WriteString(curlWrapper)
	for i, s := range scripts {
		fmt.Fprintf(&sb, "echo '%s%s'; echo '%s%s' >&2\n", sectionPrefix, names[i], sectionPrefix, names[i])
		sb.WriteString(s)
	}
	script := filepath.Join(t.TempDir(), "tour.sh")
	if err := os.WriteFile(script, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "-euo", "pipefail", script)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the tour failed: %v\n--- script\n%s\n--- stdout\n%s\n--- stderr\n%s\n--- keygate's log\n%s", err, sb.String(), stdout.String(), stderr.String(), gateLogs())
	}
	out := map[string]tourSection{}
	cur := ""
	for _, line := range strings.SplitAfter(stdout.String(), "\n") {
		if name, ok := strings.CutPrefix(line, sectionPrefix); ok {
			cur = strings.TrimSuffix(name, "\n")
			out[cur] = tourSection{name: cur}
			continue
		}
		s := out[cur]
		s.stdout += line
		out[cur] = s
	}
	// On stderr a marker may follow curl's progress meter on the same line.
	cur = ""
	for _, line := range strings.Split(stderr.String(), "\n") {
		if _, name, ok := strings.Cut(line, sectionPrefix); ok {
			cur = name
			continue
		}
		if _, rest, ok := strings.Cut(line, statusPrefix); ok {
			code, _, _ := strings.Cut(rest, " ")
			n, err := strconv.Atoi(code)
			if err != nil {
				t.Fatalf("curl status line %q", line)
			}
			s := out[cur]
			s.statuses = append(s.statuses, n)
			out[cur] = s
		}
	}
	if len(out) != len(names) {
		t.Fatalf("the tour printed %d sections, want %d\n%s", len(out), len(names), stdout.String())
	}
	return out
}

// jsonValues decodes a stream of JSON values.
func jsonValues(t *testing.T, name, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber() // 5368709120 stays 5368709120
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: output is not a stream of JSON values: %v\n%s", name, err, s)
		}
		switch v := v.(type) {
		case map[string]any:
			out = append(out, v)
		case []any:
			out = append(out, map[string]any{"list": v})
		default:
			t.Fatalf("%s: unexpected JSON value %v", name, v)
		}
	}
}

// field walks a decoded JSON value along a path of object keys and list
// indexes.
func field(v any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[p]
		case int:
			l, _ := v.([]any)
			if p >= len(l) {
				return nil
			}
			v = l[p]
		}
	}
	return v
}

// wantStatuses checks the statuses of a section as a multiset: a process
// substitution's curl may report after the next command has started.
func wantStatuses(t *testing.T, s tourSection, want ...int) {
	t.Helper()
	got := slices.Sorted(slices.Values(s.statuses))
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("%s: curl statuses %v, want %v", s.name, s.statuses, want)
	}
}

// wantField checks one field of a decoded answer.
func wantField(t *testing.T, name string, v any, want any, path ...any) {
	t.Helper()
	if got := field(v, path...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: %v is %v, want %v", name, path, got, want)
	}
}

// statusComment is a documented answer at the end of a command line:
// `curl … # 401 {"statusCode":401,…}`.
var statusComment = regexp.MustCompile(`#\s+(\d{3}) (\{.*\})\s*$`)

func TestTour(t *testing.T) {
	blocks := tourBlocks(t)
	if t.Failed() {
		t.FailNow()
	}
	tools := tourTools(t)
	up := startDemoUpstream(t, tools["go"])
	// docs/cli.md runs `keygate admin`: the binary, on the tour's PATH.
	keygateDir := filepath.Dir(buildKeygate(t))
	eachStore(t, func(t *testing.T, env map[string]string) {
		env["KEYGATE_UPSTREAM_URL"] = "http://" + up
		env["KEYGATE_ADMIN_TOKEN"] = docToken
		// A seed 003 login spends its store deadline (4 × this + 1 s) on
		// the argon2id check too; on a loaded 2-core machine that check
		// alone has taken seconds, and a login under such load once got 503.
		env["KEYGATE_REDIS_TIMEOUT"] = "1s"
		g := startGate(t, env)
		addrs := strings.NewReplacer(docAdminAddr, g.l.Admin, docDataAddr, g.l.Data)

		// The test's own probes, run in the same session after a block.
		probes := map[string]string{
			"README.md": `printf 'ORG=%s\n' "$ORG"
curl -s -H "X-API-Key: $SECRET" localhost:8000/hello
`,
			"docs/partner-api.md": `curl -s -H "X-API-Key: $SUB" localhost:8000/hello
`,
		}
		var names, scripts []string
		for _, b := range blocks {
			names = append(names, b.name())
			scripts = append(scripts, addrs.Replace(b.text))
			if p, ok := probes[b.file]; ok {
				names = append(names, "probe after "+b.name())
				scripts = append(scripts, addrs.Replace(p))
			}
		}
		env2 := []string{
			"PATH=" + keygateDir + string(os.PathListSeparator) + os.Getenv("PATH"),
			"HOME=" + t.TempDir(), // no ~/.curlrc
			"no_proxy=*", "NO_PROXY=*",
		}
		out := runTour(t, tools["bash"], env2, names, scripts, g.logs.String)

		// Every block: no curl failed to connect, and no 5xx.
		for _, s := range out {
			for _, st := range s.statuses {
				if st == 0 || st >= 500 {
					t.Errorf("%s: a curl call got status %d\n%s", s.name, st, s.stdout)
				}
			}
		}
		// Every documented `# <status> <body>` answer is what the reader gets.
		for _, b := range blocks {
			s := out[b.name()]
			for _, line := range strings.Split(b.text, "\n") {
				m := statusComment.FindStringSubmatch(line)
				if m == nil {
					continue
				}
				code, _ := strconv.Atoi(m[1])
				if !slices.Contains(s.statuses, code) || !strings.Contains(s.stdout, m[2]+"\n") {
					t.Errorf("%s documents %s %s, but the tour printed (statuses %v)\n%s", b.name(), m[1], m[2], s.statuses, s.stdout)
				}
			}
		}

		for _, b := range blocks {
			s := out[b.name()]
			switch b.file {
			case "README.md":
				checkTourREADME(t, s, out["probe after "+b.name()])
			case "docs/account-api.md":
				checkTourAccount(t, s)
			case "docs/user-api.md":
				checkTourUser(t, s)
			case "docs/partner-api.md":
				checkTourPartner(t, s, out["probe after "+b.name()])
			case "docs/rate-limits.md":
				// A burst of 5: five admitted, the sixth refused at once.
				if !strings.Contains(s.stdout, "200 200 200 200 200 429 \n") {
					t.Errorf("%s: want 5 × 200 then 429\n%s", s.name, s.stdout)
				}
			case "docs/cli.md":
				checkTourCLI(t, s)
			case "docs/key-lifecycle.md":
				for _, want := range []string{"false\n403\n", "[\"read\"]\n403\n", "200 200\n", `{"enabled":true,"expires_at":null}`} {
					if !strings.Contains(s.stdout, want) {
						t.Errorf("%s: output lacks %q\n%s", s.name, want, s.stdout)
					}
				}
			}
		}
	})
}

// checkTourREADME: plan, organization and key are created, the key works
// three ways with identity headers reaching the upstream, is refused without
// or with a wrong credential, and is refused at once after its deletion.
func checkTourREADME(t *testing.T, s, probe tourSection) {
	t.Helper()
	wantStatuses(t, s, 201, 201, 201, 200, 200, 200, 401, 403, 204)
	org, ok := strings.CutPrefix(strings.SplitN(probe.stdout, "\n", 2)[0], "ORG=")
	if !ok || org == "" {
		t.Fatalf("probe: no ORG in %q", probe.stdout)
	}
	if !strings.Contains(s.stdout, "HTTP/1.1 200 OK") {
		t.Errorf("%s: curl -i shows no 200\n%s", s.name, s.stdout)
	}
	for _, h := range []string{"ratelimit-policy: \"org\";q=1000;w=", "ratelimit: \"org\";r=999;t="} {
		if !strings.Contains(strings.ToLower(s.stdout), h) {
			t.Errorf("%s: curl -i shows no %q header\n%s", s.name, h, s.stdout)
		}
	}
	echoes := 0
	for _, line := range strings.Split(s.stdout, "\n") {
		if !strings.HasPrefix(line, `{"headers":`) {
			continue
		}
		echoes++
		var echo struct {
			Method  string            `json:"method"`
			Path    string            `json:"path"`
			Headers map[string]string `json:"headers"`
		}
		if err := json.Unmarshal([]byte(line), &echo); err != nil {
			t.Fatalf("%s: demo upstream echo %q: %v", s.name, line, err)
		}
		if echo.Method != "GET" || echo.Path != "/hello" || echo.Headers["X-Keygate-Org-Id"] != org ||
			echo.Headers["X-Keygate-Key-Name"] != "ci" || echo.Headers["X-Keygate-Permissions"] != "read,write" || echo.Headers["X-Keygate-Key-Id"] == "" {
			t.Errorf("%s: the upstream got %+v, want GET /hello with the identity of key ci of %s", s.name, echo, org)
		}
	}
	if echoes != 2 {
		t.Errorf("%s: %d answers of the demo upstream, want 2\n%s", s.name, echoes, s.stdout)
	}
	// jq .organization_quota, pretty-printed: the two admitted calls.
	i := strings.Index(s.stdout, "\n{\n")
	if i < 0 {
		t.Fatalf("%s: no organization_quota object\n%s", s.name, s.stdout)
	}
	var quota map[string]any
	dec := json.NewDecoder(strings.NewReader(s.stdout[i:]))
	dec.UseNumber()
	if err := dec.Decode(&quota); err != nil {
		t.Fatalf("%s: organization_quota: %v", s.name, err)
	}
	wantField(t, s.name, quota, 1000, "total_quota")
	wantField(t, s.name, quota, 2, "current_usage")
	wantField(t, s.name, quota, "plan", "source")
	// After the DELETE the key is refused at once.
	wantStatuses(t, probe, 403)
	if !strings.Contains(probe.stdout, `{"error":true,"statusCode":403,"message":"Invalid API key"}`) {
		t.Errorf("the deleted key got\n%s", probe.stdout)
	}
}

// checkTourAccount: the seed 000 routes with an admin key of the tour's
// organization, which the tour charged twice.
func checkTourAccount(t *testing.T, s tourSection) {
	t.Helper()
	wantStatuses(t, s, 201, 200, 200, 200, 200, 200)
	v := jsonValues(t, s.name, s.stdout)
	if len(v) != 5 {
		t.Fatalf("%s: %d answers, want 5 (stats, plans, key, keys, delete)\n%s", s.name, len(v), s.stdout)
	}
	stats, plans, created, list, deleted := v[0], v[1], v[2], v[3], v[4]
	for path, want := range map[string]any{"code": 200, "msg": "ok", "data.name": "Acme", "data.provider": "keygate",
		"data.email": "ops@acme.example", "data.plan": "Free", "data.requests": 2, "data.requests_limit": 1000,
		"data.egress_limit": 5368709120, "data.pinned_count_limit": nil} {
		wantField(t, s.name+" stats", stats, want, splitPath(path)...)
	}
	// egress is 0 until the per-second flush books the two answers.
	egress, _ := field(stats, "data", "egress").(json.Number)
	if n, err := egress.Int64(); err != nil || n < 0 {
		t.Errorf("%s: stats egress is %v", s.name, field(stats, "data", "egress"))
	}
	wantField(t, s.name+" plans", plans, "Free", "data", 0, "name")
	wantField(t, s.name+" plans", plans, 1000, "data", 0, "requests_limit")
	if secret, _ := field(created, "data", "access_secret").(string); !strings.HasPrefix(secret, "kg_") {
		t.Errorf("%s: POST /api/v0/key answered %v", s.name, created)
	}
	wantField(t, s.name+" keys", list, "owner", "data", 0, "name")
	wantField(t, s.name+" keys", list, "test_key", "data", 1, "name")
	wantField(t, s.name+" keys", list, field(created, "data", "access_key"), "data", 1, "access_key")
	wantField(t, s.name+" keys", list, nil, "data", 1, "access_secret")
	if !strings.HasSuffix(s.stdout, `{"code":200,"msg":"ok"}`+"\n") || len(deleted) != 2 {
		t.Errorf("%s: DELETE /api/v0/key answered %v", s.name, deleted)
	}
}

// checkTourUser: a login makes a full key, which makes, lists and deletes
// an apikey-level one.
func checkTourUser(t *testing.T, s tourSection) {
	t.Helper()
	wantStatuses(t, s, 201, 200, 200, 200, 200, 200)
	v := jsonValues(t, s.name, s.stdout)
	if len(v) != 4 {
		t.Fatalf("%s: %d answers, want 4 (org, create_apikey, apikeys, delete_apikey)\n%s", s.name, len(v), s.stdout)
	}
	org, created, list, deleted := v[0], v[1], v[2], v[3]
	wantField(t, s.name+" org", org, "test", "username")
	wantField(t, s.name+" create_apikey", created, "success", "status")
	if k, _ := field(created, "data", "new_key").(string); !strings.HasPrefix(k, "kg_") {
		t.Errorf("%s: create_apikey answered %v", s.name, created)
	}
	keys, _ := field(list, "data", "apikeys").(map[string]any)
	if len(keys) != 2 {
		t.Fatalf("%s: apikeys lists %v, want the laptop key and the test key", s.name, list)
	}
	var testKey string
	for id, k := range keys {
		wantField(t, s.name+" apikeys", k, id, "key")
		switch field(k, "access_level") {
		case "full":
			wantField(t, s.name+" apikeys", k, "laptop", "comment")
			wantField(t, s.name+" apikeys", k, "[admin]", "permissions")
		case "apikey":
			testKey = id
			wantField(t, s.name+" apikeys", k, "This is a test key", "comment")
			wantField(t, s.name+" apikeys", k, "[read write pin unpin]", "permissions")
		default:
			t.Errorf("%s: unexpected key %v", s.name, k)
		}
	}
	gone, _ := field(deleted, "data", "deleted_keys").(map[string]any)
	if field(deleted, "status") != "success" || len(gone) != 1 || field(gone, testKey, "key") != testKey {
		t.Errorf("%s: delete_apikey answered %v, want the test key %s", s.name, deleted, testKey)
	}
}

// checkTourPartner: a partner creates a sub-account, changes its plan now
// and for the next period, gives it a key that reaches the backend under the
// sub-account's id, deletes the key; the operator lists sub-accounts.
func checkTourPartner(t *testing.T, s, probe tourSection) {
	t.Helper()
	const id = "123e4567-e89b-12d3-a456-426614174000"
	wantStatuses(t, s, 201, 201, 201, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)
	v := jsonValues(t, s.name, s.stdout)
	if len(v) != 10 {
		t.Fatalf("%s: %d answers, want 10\n%s", s.name, len(v), s.stdout)
	}
	wantField(t, s.name+" plan", v[0], 6, "id")
	ok := map[string]any{"code": 200, "msg": "ok"}
	for _, i := range []int{1, 3, 4, 7} {
		if fmt.Sprint(v[i]) != fmt.Sprint(ok) {
			t.Errorf("%s: answer %d is %v, want %v", s.name, i, v[i], ok)
		}
	}
	stats := v[2]
	wantField(t, s.name+" stats", stats, "John Doe", "data", "name")
	wantField(t, s.name+" stats", stats, "Free", "data", "plan")
	wantField(t, s.name+" stats", stats, "Free", "data", "next_plan")
	if _, isNum := field(stats, "data", "next_bill_at").(json.Number); !isNum {
		t.Errorf("%s: stats next_bill_at is %v", s.name, field(stats, "data", "next_bill_at"))
	}
	wantField(t, s.name+" keys", v[5], "test_key", "data", 0, "name")
	wantField(t, s.name+" keys", v[5], "[read write]", "data", 0, "permissions")
	wantField(t, s.name+" upstream", v[6], id, "headers", "X-Keygate-Org-Id")
	wantField(t, s.name+" upstream", v[6], "test_key", "headers", "X-Keygate-Key-Name")
	wantField(t, s.name+" suborgs", v[8], id, "list", 0, "id")
	wantField(t, s.name+" suborgs", v[8], 6, "list", 0, "plan_id")
	wantField(t, s.name+" suborgs", v[8], 1, "list", 0, "next_plan_id")
	wantField(t, s.name+" patch", v[9], false, "partner")
	// The deleted sub-account key is refused.
	wantStatuses(t, probe, 403)
}

// checkTourCLI: keygate admin lists the tour's plan and usage, creates a
// key showing its secret once, lists it as JSON and deletes it.
func checkTourCLI(t *testing.T, s tourSection) {
	t.Helper()
	for _, re := range []string{
		`(?m)^ID +NAME +PRICE +PERIOD +QUOTA +LIMITS +KEY RATE LIMIT +ORG RATE LIMIT$`,
		`(?m)^1 +Free +0\.00 +month +1000 +egress=5368709120 +- +-$`,
		`(?m)^ORG +USED +QUOTA +SOURCE +ALLOCATED TO KEYS +AVAILABLE TO KEYS$`,
		`(?m)^SECRET: +kg_\S+$`,
		`(?m)^The secret is shown only this once`,
		`(?m)^cli-demo$`,
		`(?m)^deleted key cli-demo of organization \S+$`,
	} {
		if !regexp.MustCompile(re).MatchString(s.stdout) {
			t.Errorf("%s: output lacks %s\n%s", s.name, re, s.stdout)
		}
	}
}

// splitPath turns "data.name" into a field path.
func splitPath(p string) []any {
	var out []any
	for _, s := range strings.Split(p, ".") {
		out = append(out, s)
	}
	return out
}
