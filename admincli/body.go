package admincli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/keys"
)

// kind is how a flag's text becomes a JSON value of the request body.
type kind int

const (
	kString     kind = iota // any text → a JSON string
	kInt                    // a decimal integer
	kQuota                  // a decimal integer, or none/null → null
	kBool                   // true/false (a bare --flag is true)
	kRate                   // a rate-limit spec (parseRateLimit), or none/null → null
	kLimits                 // meter=N,meter=N (repeatable), or none/null → null
	kList                   // a,b,c (repeatable) → a JSON array of strings
	kTime                   // RFC 3339, a Go duration from now, or never/none/null → null
	kDuration               // a Go duration, as text
	kSecretFile             // a file ("-" = stdin) whose first line is the value
	numKinds
)

// field is one body flag of a command.
type field struct {
	flag  string // without dashes
	json  string // the body's field
	kind  kind
	usage string
}

// flagValue collects a body flag's text as given.
type flagValue struct {
	f    field
	vals []string
}

func (v *flagValue) String() string { return strings.Join(v.vals, ",") }

func (v *flagValue) Set(s string) error {
	if v.f.kind == kList || v.f.kind == kLimits {
		v.vals = append(v.vals, s)
	} else {
		v.vals = []string{s}
	}
	return nil
}

// IsBoolFlag lets a bool field be given as a bare --flag.
func (v *flagValue) IsBoolFlag() bool { return v.f.kind == kBool }

// bodyFlags are a command's body flags on its flag set.
type bodyFlags struct {
	vals []*flagValue
}

func newBodyFlags(fs *flag.FlagSet, fields []field) *bodyFlags {
	b := &bodyFlags{}
	for _, f := range fields {
		v := &flagValue{f: f}
		fs.Var(v, f.flag, f.usage)
		b.vals = append(b.vals, v)
	}
	return b
}

// set returns the fields given on the command line.
func (b *bodyFlags) set() []*flagValue {
	var out []*flagValue
	for _, v := range b.vals {
		if len(v.vals) > 0 {
			out = append(out, v)
		}
	}
	return out
}

// isNull reports whether s asks for a JSON null.
func isNull(s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "none", "null":
		return true
	}
	return false
}

// convert turns a flag's text into the JSON value of its field. now is the
// clock for relative times. kSecretFile is read by the caller.
func convert(k kind, s string, now time.Time) (json.RawMessage, error) {
	switch k {
	case kString, kDuration, kSecretFile:
		if k == kDuration {
			if _, err := time.ParseDuration(s); err != nil {
				return nil, errors.New("want a Go duration such as 30m or 1h")
			}
		}
		return json.Marshal(s)
	case kInt:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, errors.New("want an integer")
		}
		return json.Marshal(n)
	case kQuota:
		if isNull(s) {
			return json.RawMessage("null"), nil
		}
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, errors.New("want an integer, or none")
		}
		return json.Marshal(n)
	case kBool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, errors.New("want true or false")
		}
		return json.Marshal(b)
	case kRate:
		if isNull(s) {
			return json.RawMessage("null"), nil
		}
		l, err := parseRateLimit(s)
		if err != nil {
			return nil, err
		}
		return json.Marshal(l)
	case kLimits:
		if isNull(s) {
			return json.RawMessage("null"), nil
		}
		m, err := parseLimits(s)
		if err != nil {
			return nil, err
		}
		return json.Marshal(m)
	case kList:
		list := []string{}
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
		return json.Marshal(list)
	case kTime:
		return convertTime(s, now)
	}
	return nil, fmt.Errorf("unknown kind %d", k)
}

// convertTime reads an instant: RFC 3339, a Go duration from now (720h), or
// never/none/null for none.
func convertTime(s string, now time.Time) (json.RawMessage, error) {
	s = strings.TrimSpace(s)
	if isNull(s) || strings.EqualFold(s, "never") {
		return json.RawMessage("null"), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return json.Marshal(t.UTC().Format(time.RFC3339))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, errors.New("want an RFC 3339 time (2027-01-31T00:00:00Z), a duration from now (720h), or never")
	}
	t := now.Add(d)
	if t.Year() < 1 || t.Year() > 9999 {
		return nil, errors.New("the time is out of range")
	}
	return json.Marshal(t.UTC().Format(time.RFC3339))
}

// rateLimit is a rate limit as the operator API writes it.
type rateLimit struct {
	Requests int64  `json:"requests"`
	Per      string `json:"per"`
	Burst    int64  `json:"burst,omitempty"`
	Shadow   bool   `json:"shadow,omitempty"`
}

// String renders the limit as the spec parseRateLimit reads, so a table
// cell can be pasted back into a flag.
func (l *rateLimit) String() string {
	if l == nil {
		return "-"
	}
	s := strconv.FormatInt(l.Requests, 10) + "/" + l.Per
	if l.Burst != 0 {
		s += ",burst=" + strconv.FormatInt(l.Burst, 10)
	}
	if l.Shadow {
		s += ",shadow"
	}
	return s
}

// parseRateLimit reads "N/PER[,burst=B][,shadow]": N requests per PER (a Go
// duration; a bare unit such as s, m or h means one of it), at most B at
// once. The API checks the bounds.
func parseRateLimit(s string) (rateLimit, error) {
	const want = "want N/PER[,burst=B][,shadow], such as 10/1m or 100/s,burst=20"
	parts := strings.Split(s, ",")
	n, per, ok := strings.Cut(strings.TrimSpace(parts[0]), "/")
	if !ok {
		return rateLimit{}, errors.New(want)
	}
	var l rateLimit
	var err error
	if l.Requests, err = strconv.ParseInt(strings.TrimSpace(n), 10, 64); err != nil || l.Requests < 1 {
		return rateLimit{}, errors.New(want + ": N must be a positive integer")
	}
	per = strings.TrimSpace(per)
	if per != "" && (per[0] < '0' || per[0] > '9') && per[0] != '.' {
		per = "1" + per
	}
	d, err := time.ParseDuration(per)
	if err != nil || d <= 0 {
		return rateLimit{}, errors.New(want + ": PER must be a Go duration such as 1s, 1m or 1h")
	}
	l.Per = keys.FormatRatePer(d)
	seen := map[string]bool{}
	for _, p := range parts[1:] {
		k, v, hasValue := strings.Cut(strings.TrimSpace(p), "=")
		if seen[k] {
			return rateLimit{}, fmt.Errorf("%s: %s given twice", want, k)
		}
		seen[k] = true
		switch {
		case k == "burst" && hasValue:
			if l.Burst, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64); err != nil || l.Burst < 1 {
				return rateLimit{}, errors.New(want + ": burst must be a positive integer")
			}
		case k == "shadow" && !hasValue:
			l.Shadow = true
		default:
			return rateLimit{}, fmt.Errorf("%s: unknown part %q", want, p)
		}
	}
	return l, nil
}

// parseLimits reads "meter=N,meter=N" (a plan's limits of other meters).
func parseLimits(s string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		name, v, ok := strings.Cut(p, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("want meter=N, such as egress=5368709120: %q", p)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("meter %q: want an integer", name)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("meter %q given twice", name)
		}
		out[name] = n
	}
	return out, nil
}

// readBodyFile reads a -f body: a JSON object, from a file or ("-") stdin.
func readBodyFile(name string, o IO) (map[string]json.RawMessage, error) {
	b, err := readBounded(name, o, MaxBodyFile)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil || obj == nil {
		if err == nil {
			err = errors.New("null")
		}
		return nil, fmt.Errorf("-f %s: want one JSON object: %v", name, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("-f %s: want one JSON object, found more after it", name)
	}
	return obj, nil
}

// readBounded reads a file, or stdin for "-", refusing more than limit
// bytes.
func readBounded(name string, o IO, limit int64) ([]byte, error) {
	r := o.Stdin
	if name != "-" {
		f, err := o.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// readSecretFile reads the first line of a file, or stdin for "-".
func readSecretFile(name string, o IO) (string, error) {
	b, err := readBounded(name, o, maxSecretFile)
	if err != nil {
		return "", err
	}
	line, _, _ := bufio.NewReader(bytes.NewReader(b)).ReadLine()
	s := strings.TrimSpace(string(line))
	if s == "" {
		return "", fmt.Errorf("%s is empty", name)
	}
	return s, nil
}
