// Command grafana generates keygate-quota.json, keygate's Grafana dashboard,
// with the Grafana Foundation SDK:
//
//	cd deploy && go run ./grafana > grafana/keygate-quota.json
//
// The queries use the recording rules of deploy/prometheus/keygate-rules.yml
// where one exists (names with a colon) and keygate's metrics otherwise. The
// tests check that the file is what this program writes, that it decodes
// strictly, and that every query parses and names only metrics a live
// keygate exports or recording rules the rules file defines.
//
// The SDK lives in the deploy module (deploy/go.mod) so that the main module
// does not depend on it.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

func main() {
	d, err := quotaDashboard()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the dashboard:", err)
		os.Exit(1)
	}
	b, err := marshal(d)
	if err != nil {
		fmt.Fprintln(os.Stderr, "encoding the dashboard:", err)
		os.Exit(1)
	}
	if _, err := os.Stdout.Write(b); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// marshal encodes the dashboard as the file holds it.
func marshal(d dashboard.Dashboard) ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ds is every panel's and query variable's data source: the dashboard's
// datasource variable.
var ds = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// sel is the label matcher of the org variable.
const sel = `org=~"$org"`

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Datasource(ds).Expr(expr).LegendFormat(legend).Range()
}

func instant(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Datasource(ds).Expr(expr).LegendFormat(legend).Instant().RefId("A")
}

func series(title, desc, unit string, span uint32, queries ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().
		Title(title).
		Description(desc).
		Datasource(ds).
		Unit(unit).
		Height(8).
		Span(span).
		Legend(common.NewVizLegendOptionsBuilder().ShowLegend(true).DisplayMode(common.LegendDisplayModeTable).Placement(common.LegendPlacementBottom).Calcs([]string{"lastNotNull", "max"}))
	for i, q := range queries {
		p.WithTarget(q.RefId(string(rune('A' + i))))
	}
	return p
}

func quotaThresholds() *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().
		Mode(dashboard.ThresholdsModeAbsolute).
		Steps([]dashboard.Threshold{
			{Color: "green"},
			{Value: cog.ToPtr(0.8), Color: "yellow"},
			{Value: cog.ToPtr(0.9), Color: "orange"},
			{Value: cog.ToPtr(1.0), Color: "red"},
		})
}

// quotaDashboard builds the dashboard and numbers its panels.
func quotaDashboard() (dashboard.Dashboard, error) {
	d, err := buildDashboard()
	if err != nil {
		return d, err
	}
	for i, p := range d.Panels {
		id := uint32(i + 1)
		switch {
		case p.Panel != nil:
			p.Panel.Id = &id
		case p.RowPanel != nil:
			p.RowPanel.Id = id
		}
	}
	return d, nil
}

func buildDashboard() (dashboard.Dashboard, error) {
	return dashboard.NewDashboardBuilder("keygate — quotas and health").
		Uid("keygate-quota").
		Description("Per-organization quota use, burn rate and projected exhaustion; request outcomes, latency, store health, fail-open admits and revocation lag of keygate sidecars.").
		Tags([]string{"keygate", "quota"}).
		Editable().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Data source").
			Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("org").
			Label("Organization").
			Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(keygate_quota_usage, org)")}).
			Definition("label_values(keygate_quota_usage, org)").
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).
			IncludeAll(true).
			AllValue(".*")).
		WithVariable(dashboard.NewCustomVariableBuilder("topn").
			Label("Top N").
			Values(dashboard.StringOrMap{String: cog.ToPtr("5,10,20,50")}).
			Current(dashboard.VariableOption{
				Text:  dashboard.StringOrArrayOfString{String: cog.ToPtr("10")},
				Value: dashboard.StringOrArrayOfString{String: cog.ToPtr("10")},
			})).
		// Quota.
		WithRow(dashboard.NewRowBuilder("Quota")).
		WithPanel(bargauge.NewPanelBuilder().
			Title("Request quota used — top $topn organizations").
			Description("Share of the current period's request quota each organization has used (the highest across sidecars). 80 %, 90 % and 100 % are the alert thresholds.").
			Datasource(ds).
			Unit("percentunit").
			Min(0).
			Max(1).
			Height(9).
			Span(12).
			Thresholds(quotaThresholds()).
			DisplayMode(common.BarGaugeDisplayModeGradient).
			Orientation(common.VizOrientationHorizontal).
			WithTarget(instant(`sort_desc(topk($topn, org_meter:keygate_quota_usage:ratio{meter="requests", `+sel+`}))`, "{{org}}"))).
		WithPanel(series("Quota used over time — top $topn", "Share of each limited meter used in its current period (requests, ingress, egress and upstream-reported meters).", "percentunit", 12,
			query(`topk($topn, org_meter:keygate_quota_usage:ratio{`+sel+`})`, "{{org}} {{meter}}"))).
		WithPanel(series("Burn rate — requests per hour", "How fast each organization uses its request quota (linear regression over the last hour).", "short", 8,
			query(`topk($topn, org_meter:keygate_quota_usage:deriv1h{meter="requests", `+sel+`} * 3600)`, "{{org}}"))).
		WithPanel(series("Projected use in 24 h (share of limit)", "predict_linear over the last hour, 24 hours ahead, divided by the limit: above 100 % the quota runs out within a day at the current pace (unless the period resets first).", "percentunit", 8,
			query(`topk($topn, predict_linear(org_meter:keygate_quota_usage:max{`+sel+`}[1h], 86400) / on (org, meter, period) (org_meter:keygate_quota_limit:max{`+sel+`} > 0))`, "{{org}} {{meter}}"))).
		WithPanel(table.NewPanelBuilder().
			Title("Projected exhaustion — time left").
			Description("Time until the limit is reached at the pace of the last hour (predict_linear's slope); only meters whose use grows. The period may reset first.").
			Datasource(ds).
			Unit("s").
			Height(8).
			Span(8).
			WithTarget(instant(`sort(bottomk($topn, (org_meter:keygate_quota_limit:max{`+sel+`} - org_meter:keygate_quota_usage:max{`+sel+`}) / ((predict_linear(org_meter:keygate_quota_usage:max{`+sel+`}[1h], 3600) - org_meter:keygate_quota_usage:max{`+sel+`}) / 3600 > 0)))`, "{{org}} {{meter}}").Format(prometheus.PromQueryFormatTable))).
		WithPanel(series("Usage and limit", "Usage of every meter next to its limit, as the sidecars last saw them.", "short", 24,
			query(`org_meter:keygate_quota_usage:max{`+sel+`}`, "{{org}} {{meter}} used"),
			query(`org_meter:keygate_quota_limit:max{`+sel+`}`, "{{org}} {{meter}} limit"))).
		// Requests.
		WithRow(dashboard.NewRowBuilder("Requests")).
		WithPanel(series("Refusals and errors by status", "401 no credential, 403 invalid credential or missing permission, 429 quota exhausted or rate limited, 503 store unavailable, 502 upstream unreachable, 504 upstream timeout; 499 the client went away before the answer (no response sent; a rise often means a slow upstream whose callers give up before KEYGATE_UPSTREAM_TIMEOUT).", "reqps", 12,
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="no_credential", `+sel+`})`, "401 no credential"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome=~"invalid_credential|forbidden", status_class="4xx", `+sel+`})`, "403 invalid credential / forbidden"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="quota_exceeded", `+sel+`})`, "429 quota exceeded"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="rate_limited", `+sel+`})`, "429 rate limited"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="store_unavailable", `+sel+`})`, "503 store unavailable"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="upstream_error", `+sel+`})`, "502 upstream error"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="upstream_timeout", `+sel+`})`, "504 upstream timeout"),
			query(`sum(org_outcome:keygate_requests:rate5m{outcome="client_closed", `+sel+`})`, "499 client closed"))).
		WithPanel(series("Requests by outcome", "Every request by outcome (admitted requests include the upstream's own errors).", "reqps", 12,
			query(`sum by (outcome) (org_outcome:keygate_requests:rate5m{`+sel+`})`, "{{outcome}}"))).
		WithPanel(series("Requests by organization — top $topn", "Request rate of the busiest organizations; org=\"other\" gathers those past KEYGATE_METRICS_MAX_ORGS, org=\"none\" requests without a valid credential.", "reqps", 12,
			query(`topk($topn, sum by (org) (org_outcome:keygate_requests:rate5m{`+sel+`}))`, "{{org}}"))).
		WithPanel(series("5xx share", "Share of responses with a 5xx status (requests abandoned by their client, 499, are left out); the KeygateRising5xxShare alert fires above 5 % when it doubled in an hour.", "percentunit", 12,
			query(`keygate:requests_5xx:ratio_rate5m`, "5xx share"))).
		// Latency.
		WithRow(dashboard.NewRowBuilder("Latency")).
		WithPanel(series("Latency added by keygate vs upstream", "Whole-request and upstream-only quantiles, and the mean time keygate itself adds per request (request time minus upstream time, over all requests).", "s", 12,
			query(`histogram_quantile(0.5, le:keygate_request_duration_seconds_bucket:rate5m)`, "request p50"),
			query(`histogram_quantile(0.99, le:keygate_request_duration_seconds_bucket:rate5m)`, "request p99"),
			query(`histogram_quantile(0.5, le:keygate_upstream_duration_seconds_bucket:rate5m)`, "upstream p50"),
			query(`histogram_quantile(0.99, le:keygate_upstream_duration_seconds_bucket:rate5m)`, "upstream p99"),
			query(`keygate:request_added_seconds:mean5m`, "added by keygate (mean)"))).
		WithPanel(series("Store latency (p99 by call)", "Duration of store calls on the request path and of the usage flush.", "s", 12,
			query(`histogram_quantile(0.99, op_le:keygate_store_duration_seconds_bucket:rate5m)`, "{{op}} p99"),
			query(`histogram_quantile(0.5, op_le:keygate_store_duration_seconds_bucket:rate5m)`, "{{op}} p50"))).
		// Health.
		WithRow(dashboard.NewRowBuilder("Store, fail-open and revocation")).
		WithPanel(series("Store errors", "Store calls that failed or timed out (KEYGATE_REDIS_TIMEOUT), by call.", "ops", 8,
			query(`sum by (op) (rate(keygate_store_errors_total[$__rate_interval]))`, "{{op}}"))).
		WithPanel(series("Fail-open admits", "Requests admitted uncounted while the store was unreachable (KEYGATE_FAILURE_MODE=open).", "reqps", 8,
			query(`sum(rate(keygate_fail_open_admits_total[$__rate_interval]))`, "admitted uncounted"))).
		WithPanel(series("Quota leases", "Units of quota held unspent by the sidecars (KEYGATE_QUOTA_LEASES=auto), and per second: given back unspent, lost (counted as used without being admitted: lost replies, blocks left at shutdown), reservations by result.", "short", 12,
			query(`sum(keygate_quota_lease_outstanding_units)`, "held unspent"),
			query(`sum(rate(keygate_quota_lease_returned_units_total[$__rate_interval]))`, "returned/s"),
			query(`sum(rate(keygate_quota_lease_lost_units_total[$__rate_interval]))`, "lost/s"),
			query(`sum by (result) (rate(keygate_quota_lease_renewals_total[$__rate_interval]))`, "reservations {{result}}/s"))).
		WithPanel(series("Rate-limit leases", "Slots of rate limits held unspent by the sidecars (KEYGATE_QUOTA_LEASES=auto; lapsed ones included until their block goes back), and per second: given back unspent, blocks asked for by result.", "short", 12,
			query(`sum(keygate_rate_lease_outstanding_slots)`, "held unspent"),
			query(`sum(rate(keygate_rate_lease_returned_slots_total[$__rate_interval]))`, "returned/s"),
			query(`sum by (result) (rate(keygate_rate_lease_renewals_total[$__rate_interval]))`, "reservations {{result}}/s"))).
		WithPanel(series("Auth cache lookups", "Credential lookups served from the local cache (hit), the store (miss) or the stale cache during an outage.", "ops", 8,
			query(`sum by (result) (rate(keygate_auth_cache_lookups_total[$__rate_interval]))`, "{{result}}"))).
		WithPanel(series("Revocation lag (publish → applied)", "Time from a key's deletion to its eviction on each sidecar; the contract is under 1 s (alert KeygateRevocationLagHigh).", "s", 12,
			query(`histogram_quantile(0.5, sum by (le) (rate(keygate_revocation_lag_seconds_bucket[$__rate_interval])))`, "p50"),
			query(`histogram_quantile(0.99, sum by (le) (rate(keygate_revocation_lag_seconds_bucket[$__rate_interval])))`, "p99"))).
		WithPanel(series("Revocations received", "Revocations applied per second, across sidecars.", "ops", 6,
			query(`sum(rate(keygate_revocations_received_total[$__rate_interval]))`, "revocations"))).
		// Credential cache.
		WithRow(dashboard.NewRowBuilder("Credential cache")).
		WithPanel(series("Cached credentials", "Keys held by each sidecar's credential cache; entries live until a change to their key, organization or plan arrives.", "short", 8,
			query(`sum by (instance) (keygate_auth_cache_entries)`, "{{instance}}"))).
		WithPanel(series("Credential cache memory", "Heap each sidecar's credential cache holds, as it estimates it against KEYGATE_AUTH_CACHE_BYTES (past it the least recently used keys are evicted).", "bytes", 8,
			query(`sum by (instance) (keygate_auth_cache_bytes)`, "{{instance}}"))).
		WithPanel(series("Change log: revalidations and breaks", "Background reads of the change log that confirmed a whole cache, and how follows that broke resumed: catch_up from the last change seen, or forget (the log no longer held it; the cache was read again from the store).", "ops", 8,
			query(`sum(rate(keygate_auth_cache_revalidations_total[$__rate_interval]))`, "revalidations"),
			query(`sum by (event) (rate(keygate_auth_change_log_events_total[$__rate_interval]))`, "{{event}}"))).
		WithPanel(table.NewPanelBuilder().
			Title("Sidecar builds").
			Description("Running keygate versions.").
			Datasource(ds).
			Height(8).
			Span(6).
			WithTarget(instant(`count by (version, revision, goversion) (keygate_build_info)`, "{{version}}").Format(prometheus.PromQueryFormatTable))).
		Build()
}
