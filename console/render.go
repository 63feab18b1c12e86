package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/keys"
)

// pageNames are the page templates; each is parsed with layout.html.
var pageNames = []string{"signin", "error", "plans", "planform", "orgs", "orgform", "org", "key", "delete"}

var funcs = template.FuncMap{
	"pathesc":  url.PathEscape,
	"queryesc": url.QueryEscape,
	"num":      num,
	"optnum": func(v *int64) string {
		if v == nil {
			return "no limit"
		}
		return num(*v)
	},
	"when": func(t any) string {
		switch t := t.(type) {
		case time.Time:
			if t.IsZero() {
				return "never"
			}
			return t.UTC().Format("2006-01-02 15:04 UTC")
		case *time.Time:
			if t == nil {
				return "never"
			}
			return t.UTC().Format("2006-01-02 15:04 UTC")
		}
		return fmt.Sprint(t)
	},
	"in": func(t, now time.Time) string {
		if t.IsZero() {
			return ""
		}
		d := t.Sub(now).Round(time.Minute)
		if d <= 0 {
			return "now"
		}
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		switch {
		case h >= 48:
			return fmt.Sprintf("in %d days", h/24)
		case h > 0:
			return fmt.Sprintf("in %dh %dm", h, m)
		}
		return fmt.Sprintf("in %dm", m)
	},
	"ratelimit": func(l *keys.RateLimit) string {
		if l == nil {
			return "none"
		}
		s := fmt.Sprintf("%s per %s", num(l.Requests), l.Per)
		if l.Burst != 0 {
			s += fmt.Sprintf(", burst %s", num(l.Burst))
		}
		if l.Shadow {
			s += " (shadow)"
		}
		return s
	},
	"perms": func(ps []keys.Permission) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = string(p)
		}
		return strings.Join(s, ", ")
	},
	"expired": func(k keys.Key, now time.Time) bool { return k.Expired(now) },
}

// num writes n with thousands separators.
func num(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func parsePages() map[string]*template.Template {
	out := make(map[string]*template.Template, len(pageNames))
	for _, n := range pageNames {
		out[n] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+n+".html"))
	}
	return out
}

// render writes a page. It renders into a buffer first, so a template
// failure is an error page, never half a page.
func (c *Console) render(w http.ResponseWriter, status int, page string, v view) {
	var b bytes.Buffer
	if err := c.pages[page].Execute(&b, v); err != nil {
		c.log.Error("rendering console page " + page + ": " + err.Error())
		status = http.StatusInternalServerError
		b.Reset()
		_ = c.pages["error"].Execute(&b, view{Title: "Error", Error: "The page could not be shown; the server log has the details."})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}
