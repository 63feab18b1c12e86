package admincli

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
)

// What the operator API answers, as far as the tables show it. Fields the
// client does not know are ignored (-o json shows everything).
type (
	plan struct {
		ID             int64            `json:"id"`
		Name           string           `json:"name"`
		Price          string           `json:"price"`
		Period         string           `json:"period"`
		MaxAPIRequests *int64           `json:"max_api_requests"`
		Limits         map[string]int64 `json:"limits"`
		KeyRateLimit   *rateLimit       `json:"key_rate_limit"`
		OrgRateLimit   *rateLimit       `json:"org_rate_limit"`
	}
	org struct {
		ID             string     `json:"id"`
		Name           string     `json:"name"`
		Email          string     `json:"email"`
		EmailVerified  bool       `json:"email_verified"`
		PlanID         int64      `json:"plan_id"`
		NextPlanID     *int64     `json:"next_plan_id"`
		Partner        bool       `json:"partner"`
		PartnerID      string     `json:"partner_id"`
		MaxAPIRequests *int64     `json:"max_api_requests"`
		RateLimit      *rateLimit `json:"rate_limit"`
		Unlimited      bool       `json:"unlimited"`
		Username       string     `json:"username"`
		CreatedAt      string     `json:"created_at"`
		Usage          *usage     `json:"usage"`
	}
	usage struct {
		CurrentUsage         int64  `json:"current_usage"`
		TotalQuota           *int64 `json:"total_quota"`
		AllocatedAPIKeyQuota int64  `json:"allocated_api_key_quota"`
		AvailableAPIKeyQuota *int64 `json:"available_api_key_quota"`
		Source               string `json:"source"`
		Unlimited            bool   `json:"unlimited"`
	}
	apiKey struct {
		UID            string     `json:"uid"`
		Name           string     `json:"name"`
		AccessKey      string     `json:"access_key"`
		AccessSecret   string     `json:"access_secret"`
		Permissions    []string   `json:"permissions"`
		MaxAPIRequests *int64     `json:"max_api_requests"`
		RateLimit      *rateLimit `json:"rate_limit"`
		ExpiresAt      *string    `json:"expires_at"`
		Enabled        bool       `json:"enabled"`
		LastUsedAt     *string    `json:"last_used_at"`
		Comment        string     `json:"comment"`
		CreatedAt      string     `json:"created_at"`
	}
	rotation struct {
		UID                     string `json:"uid"`
		Name                    string `json:"name"`
		AccessKey               string `json:"access_key"`
		AccessSecret            string `json:"access_secret"`
		PreviousSecretExpiresAt string `json:"previous_secret_expires_at"`
	}
)

// cell makes a value safe for a table: a control character (a tab, a
// newline, a terminal escape) or a bidirectional override from the API must
// not break the columns or reach the terminal; such a value is quoted.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == unicode.ReplacementChar
	}) {
		return strconv.QuoteToGraphic(s)
	}
	return s
}

func num(n *int64, none string) string {
	if n == nil {
		return none
	}
	return strconv.FormatInt(*n, 10)
}

func timeOr(t *string, none string) string {
	if t == nil {
		return none
	}
	return cell(*t)
}

func rate(l *rateLimit, none string) string {
	if l == nil {
		return none
	}
	return cell(l.String())
}

// table writes rows under a header, in aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// pairs writes "label: value" lines, aligned.
func pairs(w io.Writer, kv [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, p := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

func decode(raw []byte, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	return nil
}

func limitsText(m map[string]int64) string {
	if len(m) == 0 {
		return "-"
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = k + "=" + strconv.FormatInt(m[k], 10)
	}
	return cell(strings.Join(parts, ","))
}

func planRow(p plan) []string {
	return []string{strconv.FormatInt(p.ID, 10), cell(p.Name), cell(p.Price), cell(p.Period), num(p.MaxAPIRequests, "unlimited"),
		limitsText(p.Limits), rate(p.KeyRateLimit, "-"), rate(p.OrgRateLimit, "-")}
}

var planHeader = []string{"ID", "NAME", "PRICE", "PERIOD", "QUOTA", "LIMITS", "KEY RATE LIMIT", "ORG RATE LIMIT"}

func showPlans(w io.Writer, _ *invocation, raw []byte) error {
	var ps []plan
	if err := decode(raw, &ps); err != nil {
		return err
	}
	slices.SortStableFunc(ps, func(a, b plan) int { return cmp.Compare(a.ID, b.ID) })
	rows := make([][]string, len(ps))
	for i, p := range ps {
		rows[i] = planRow(p)
	}
	return table(w, planHeader, rows)
}

func showPlan(w io.Writer, _ *invocation, raw []byte) error {
	var p plan
	if err := decode(raw, &p); err != nil {
		return err
	}
	return table(w, planHeader, [][]string{planRow(p)})
}

// pickPlan finds plan id in a list of plans.
func pickPlan(raw []byte, id string) ([]byte, bool, error) {
	var list []json.RawMessage
	if err := decode(raw, &list); err != nil {
		return nil, false, err
	}
	for _, e := range list {
		var p struct {
			ID json.Number `json:"id"`
		}
		if err := decode(e, &p); err != nil {
			return nil, false, err
		}
		if p.ID.String() == id {
			return e, true, nil
		}
	}
	return nil, false, nil
}

func orgPlan(o org) string {
	s := strconv.FormatInt(o.PlanID, 10)
	if o.NextPlanID != nil && *o.NextPlanID != o.PlanID {
		s += " (next " + strconv.FormatInt(*o.NextPlanID, 10) + ")"
	}
	return s
}

func orgKind(o org) string {
	switch {
	case o.Partner:
		return "partner"
	case o.PartnerID != "":
		return "sub-account of " + cell(o.PartnerID)
	}
	return "-"
}

func orgQuota(o org) string {
	if o.Unlimited {
		return "unlimited"
	}
	return num(o.MaxAPIRequests, "plan's")
}

func showOrgs(w io.Writer, _ *invocation, raw []byte) error {
	var os []org
	if err := decode(raw, &os); err != nil {
		return err
	}
	// Oldest first, as a reader expects of a list that grows; the API's
	// order depends on the store.
	slices.SortStableFunc(os, func(a, b org) int { return cmp.Or(cmp.Compare(a.CreatedAt, b.CreatedAt), cmp.Compare(a.ID, b.ID)) })
	rows := make([][]string, len(os))
	for i, o := range os {
		rows[i] = []string{cell(o.ID), cell(o.Name), cell(o.Email), orgPlan(o), orgKind(o), orgQuota(o), rate(o.RateLimit, "plan's"), cell(o.CreatedAt)}
	}
	return table(w, []string{"ID", "NAME", "EMAIL", "PLAN", "PARTNER", "QUOTA", "RATE LIMIT", "CREATED"}, rows)
}

func showOrg(w io.Writer, _ *invocation, raw []byte) error {
	var o org
	if err := decode(raw, &o); err != nil {
		return err
	}
	email := cell(o.Email)
	if o.EmailVerified {
		email += " (verified)"
	}
	kv := [][2]string{{"id", cell(o.ID)}, {"name", cell(o.Name)}, {"email", email}, {"plan", orgPlan(o)},
		{"partner", orgKind(o)}, {"quota", orgQuota(o)}, {"rate limit", rate(o.RateLimit, "plan's")}}
	if o.Username != "" {
		kv = append(kv, [2]string{"username", cell(o.Username)})
	}
	kv = append(kv, [2]string{"created", cell(o.CreatedAt)})
	if o.Usage != nil {
		kv = append(kv, [2]string{"usage", usageText(*o.Usage)})
	}
	return pairs(w, kv)
}

func usageText(u usage) string {
	if u.Unlimited || u.TotalQuota == nil {
		return fmt.Sprintf("%d requests this period (unlimited)", u.CurrentUsage)
	}
	return fmt.Sprintf("%d of %d requests this period (%s quota); %d allocated to keys, %s available",
		u.CurrentUsage, *u.TotalQuota, cell(u.Source), u.AllocatedAPIKeyQuota, num(u.AvailableAPIKeyQuota, "-"))
}

func showUsage(w io.Writer, _ *invocation, raw []byte) error {
	var o org
	if err := decode(raw, &o); err != nil {
		return err
	}
	if o.Usage == nil {
		return fmt.Errorf("the answer has no usage")
	}
	u := *o.Usage
	limit, avail := "unlimited", "-"
	if !u.Unlimited && u.TotalQuota != nil {
		limit, avail = strconv.FormatInt(*u.TotalQuota, 10), num(u.AvailableAPIKeyQuota, "-")
	}
	return table(w, []string{"ORG", "USED", "QUOTA", "SOURCE", "ALLOCATED TO KEYS", "AVAILABLE TO KEYS"},
		[][]string{{cell(o.ID), strconv.FormatInt(u.CurrentUsage, 10), limit, cell(u.Source), strconv.FormatInt(u.AllocatedAPIKeyQuota, 10), avail}})
}

func enabledText(k apiKey) string {
	if k.Enabled {
		return "yes"
	}
	return "no"
}

func showKeys(w io.Writer, _ *invocation, raw []byte) error {
	var ks []apiKey
	if err := decode(raw, &ks); err != nil {
		return err
	}
	slices.SortStableFunc(ks, func(a, b apiKey) int {
		return cmp.Or(cmp.Compare(a.CreatedAt, b.CreatedAt), cmp.Compare(a.Name, b.Name))
	})
	rows := make([][]string, len(ks))
	for i, k := range ks {
		rows[i] = []string{cell(k.Name), cell(k.AccessKey), cell(strings.Join(k.Permissions, ",")), enabledText(k),
			num(k.MaxAPIRequests, "-"), rate(k.RateLimit, "plan's"), timeOr(k.ExpiresAt, "never"), timeOr(k.LastUsedAt, "never"), cell(k.CreatedAt)}
	}
	return table(w, []string{"NAME", "ACCESS KEY", "PERMISSIONS", "ENABLED", "QUOTA", "RATE LIMIT", "EXPIRES", "LAST USED", "CREATED"}, rows)
}

func keyPairs(k apiKey) [][2]string {
	kv := [][2]string{{"name", cell(k.Name)}, {"access key", cell(k.AccessKey)}, {"permissions", cell(strings.Join(k.Permissions, ","))},
		{"enabled", enabledText(k)}, {"quota", num(k.MaxAPIRequests, "- (the organization's)")}, {"rate limit", rate(k.RateLimit, "plan's")},
		{"expires", timeOr(k.ExpiresAt, "never")}, {"last used", timeOr(k.LastUsedAt, "never")}}
	if k.Comment != "" {
		kv = append(kv, [2]string{"comment", cell(k.Comment)})
	}
	return append(kv, [2]string{"created", cell(k.CreatedAt)})
}

func showKey(w io.Writer, _ *invocation, raw []byte) error {
	var k apiKey
	if err := decode(raw, &k); err != nil {
		return err
	}
	return pairs(w, keyPairs(k))
}

// secretNote follows a secret: the API never shows it again.
const secretNote = "The secret is shown only this once: keygate keeps only its hash. Store it now."

func showNewKey(w io.Writer, _ *invocation, raw []byte) error {
	var k apiKey
	if err := decode(raw, &k); err != nil {
		return err
	}
	if k.AccessSecret == "" {
		return fmt.Errorf("the answer has no access_secret")
	}
	kv := append(keyPairs(k), [2]string{"SECRET", cell(k.AccessSecret)})
	if err := pairs(w, kv); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\n"+secretNote)
	return err
}

func showRotation(w io.Writer, _ *invocation, raw []byte) error {
	var r rotation
	if err := decode(raw, &r); err != nil {
		return err
	}
	if r.AccessSecret == "" {
		return fmt.Errorf("the answer has no access_secret")
	}
	if err := pairs(w, [][2]string{{"name", cell(r.Name)}, {"access key", cell(r.AccessKey)},
		{"previous secret works until", cell(r.PreviousSecretExpiresAt)}, {"NEW SECRET", cell(r.AccessSecret)}}); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\n"+secretNote)
	return err
}

func showDeleted(w io.Writer, inv *invocation, _ []byte) error {
	_, err := fmt.Fprintf(w, "deleted key %s of organization %s\n", cell(inv.args[1]), cell(inv.args[0]))
	return err
}

func showRaw(w io.Writer, _ *invocation, raw []byte) error {
	_, err := w.Write(raw)
	return err
}
