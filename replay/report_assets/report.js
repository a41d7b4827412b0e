// ctrguard report: charts drawn with Plotly from the data embedded in the page.
// Untrusted text (campaign ids, segments, reasons) only ever goes in through textContent
// or Plotly's own text fields, never through innerHTML.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("ctrguard-data").textContent);
  var W = DATA.window_s;
  var errors = [];

  function fail(message) {
    errors.push(String(message));
    var box = document.getElementById("report-errors");
    box.hidden = false;
    box.textContent = "Chart errors: " + errors.join("; ");
  }
  window.addEventListener("error", function (e) { fail(e.message); });

  function when(s) {  // epoch seconds -> a Plotly date (UTC)
    return new Date(s * 1000).toISOString().slice(0, 19).replace("T", " ");
  }

  function runs(indices) {  // sorted window indices -> [[first, last], ...]
    var out = [];
    indices.forEach(function (i) {
      var last = out[out.length - 1];
      if (last && i === last[1] + 1) { last[1] = i; } else { out.push([i, i]); }
    });
    return out;
  }

  function draw(el, cid, seg, view) {
    var camp = DATA.campaigns[cid];
    if (!camp) { el.textContent = "no figures for campaign " + cid; return; }
    var s = camp.series[seg];
    if (!s) {
      seg = "all";
      s = camp.series.all;
    }
    if (!s) { el.textContent = "no figures for " + cid; return; }
    var x = [], ctr = [], expClicks = [];
    for (var i = 0; i < s.n.length; i++) {
      x.push(when(camp.t0 + i * W + W / 2));
      ctr.push(s.n[i] > 0 ? s.k[i] / s.n[i] : null);
      expClicks.push(s.e && s.e[i] !== null ? s.e[i] * s.n[i] : null);
    }
    var traces = [];
    if (s.e) {
      traces.push({x: x, y: s.hi, mode: "lines", line: {width: 0}, hoverinfo: "skip",
                   showlegend: false, xaxis: "x", yaxis: "y"});
      traces.push({x: x, y: s.lo, mode: "lines", line: {width: 0}, fill: "tonexty",
                   fillcolor: "rgba(31,119,180,0.18)", name: "expected band (99%)",
                   hoverinfo: "skip", xaxis: "x", yaxis: "y"});
      traces.push({x: x, y: s.e, mode: "lines", name: "expected CTR",
                   line: {color: "#1f77b4", dash: "dot", width: 1.5}, xaxis: "x", yaxis: "y"});
    }
    traces.push({x: x, y: ctr, mode: "lines+markers", name: "CTR",
                 line: {color: "#333", width: 1}, marker: {size: 3}, connectgaps: false,
                 xaxis: "x", yaxis: "y"});
    if (s.a.length) {
      traces.push({x: s.a.map(function (a) { return x[a[0]]; }),
                   y: s.a.map(function (a) { return ctr[a[0]] === null ? 0 : ctr[a[0]]; }),
                   text: s.a.map(function (a) { return a[1] + " (" + a[2] + ", " + a[3] + ")"; }),
                   mode: "markers", name: "alert", hovertemplate: "%{text}<extra>alert</extra>",
                   marker: {color: "#d62728", size: 8, symbol: "x"}, xaxis: "x", yaxis: "y"});
    }
    traces.push({x: x, y: s.n, type: "bar", name: "impressions",
                 marker: {color: "rgba(100,100,100,0.55)"}, xaxis: "x", yaxis: "y2"});
    if (s.m) {
      traces.push({x: x, y: s.m, mode: "lines", name: "expected impressions",
                   line: {color: "#ff7f0e", width: 1.5}, xaxis: "x", yaxis: "y2"});
    }
    traces.push({x: x, y: s.k, type: "bar", name: "clicks",
                 marker: {color: "rgba(44,160,44,0.7)"}, xaxis: "x", yaxis: "y3"});
    if (s.e) {
      traces.push({x: x, y: expClicks, mode: "lines", name: "expected clicks",
                   line: {color: "#2ca02c", dash: "dot", width: 1.5}, xaxis: "x", yaxis: "y3"});
    }
    var shapes = [], annotations = [];
    runs(s.q).forEach(function (r) {
      shapes.push({type: "rect", xref: "x", yref: "paper", layer: "below",
                   x0: when(camp.t0 + r[0] * W), x1: when(camp.t0 + (r[1] + 1) * W),
                   y0: 0, y1: 1, fillcolor: "rgba(255,127,14,0.16)", line: {width: 0}});
    });
    (DATA.labels[cid] || []).forEach(function (lab) {
      if (lab[0] !== "*" && lab[0] !== seg && seg !== "all") { return; }
      shapes.push({type: "rect", xref: "x", yref: "paper", layer: "below",
                   x0: when(lab[2]), x1: when(lab[3]), y0: 0.94, y1: 1,
                   fillcolor: "rgba(148,103,189,0.45)", line: {width: 0}});
      annotations.push({x: when(lab[2]), y: 1, xref: "x", yref: "paper", yanchor: "bottom",
                        xanchor: "left", showarrow: false, font: {size: 10, color: "#6a3d9a"},
                        text: "label: " + lab[1] + (lab[0] === "*" ? "" : " on " + lab[0])});
    });
    var layout = {
      height: 430, margin: {l: 60, r: 20, t: 24, b: 30},
      showlegend: true, legend: {orientation: "h", y: -0.12, font: {size: 10}},
      xaxis: {type: "date", anchor: "y3"},
      yaxis: {domain: [0.47, 1], title: {text: "CTR"}, rangemode: "tozero"},
      yaxis2: {domain: [0.24, 0.43], title: {text: "impr."}, rangemode: "tozero"},
      yaxis3: {domain: [0, 0.2], title: {text: "clicks"}, rangemode: "tozero"},
      shapes: shapes, annotations: annotations, bargap: 0, hovermode: "x unified"
    };
    if (view && view.from !== undefined) {
      layout.xaxis.range = [when(Math.max(view.from, camp.t0)),
                            when(Math.min(view.to, camp.t0 + s.n.length * W))];
    }
    el.dataset.cid = cid;
    el.dataset.segment = seg;
    Plotly.react(el, traces, layout, {displaylogo: false, responsive: true})
      .then(function () { el.dataset.rendered = "1"; })
      .catch(fail);
  }

  function seriesSelect(select, cid, seg) {
    var camp = DATA.campaigns[cid];
    select.textContent = "";
    Object.keys(camp ? camp.series : {}).forEach(function (name) {
      var opt = document.createElement("option");
      opt.value = name;
      opt.textContent = name;
      if (name === seg) { opt.selected = true; }
      select.appendChild(opt);
    });
  }

  // Chart cards (incidents, worst campaigns): drawn when they come into view.
  function drawCard(card) {
    if (card.dataset.drawn) { return; }
    card.dataset.drawn = "1";
    var el = card.querySelector(".chart");
    var select = card.querySelector("select.series");
    var cid = card.dataset.cid;
    // Incident cards carry a time range; the other cards show the whole series.
    var view = card.dataset.from ? {from: Number(card.dataset.from),
                                    to: Number(card.dataset.to)} : null;
    seriesSelect(select, cid, card.dataset.segment);
    select.addEventListener("change", function () { draw(el, cid, select.value, view); });
    try { draw(el, cid, card.dataset.segment, view); } catch (e) { fail(e); }
  }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".chart-card"));
  var eager = cards.slice(0, DATA.eager_charts);
  eager.forEach(drawCard);
  if ("IntersectionObserver" in window) {
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { seen.unobserve(e.target); drawCard(e.target); }
      });
    }, {rootMargin: "400px"});
    cards.slice(DATA.eager_charts).forEach(function (c) { seen.observe(c); });
  } else {
    cards.forEach(drawCard);
  }

  // The explorer: any campaign and series, on demand, from the embedded data.
  var pick = document.getElementById("explore-campaign");
  var pickSeries = document.getElementById("explore-series");
  var exploreChart = document.getElementById("explore-chart");
  Object.keys(DATA.campaigns).sort().forEach(function (cid) {
    var opt = document.createElement("option");
    opt.value = cid;
    opt.textContent = cid;
    pick.appendChild(opt);
  });
  function explore(cid, seg, view) {
    pick.value = cid;
    seriesSelect(pickSeries, cid, seg);
    try { draw(exploreChart, cid, pickSeries.value || "all", view); } catch (e) { fail(e); }
  }
  pick.addEventListener("change", function () { explore(pick.value, "all"); });
  pickSeries.addEventListener("change", function () { explore(pick.value, pickSeries.value); });
  function fromHash() {
    var h = window.location.hash;
    if (h.indexOf("#explore?") !== 0) { return; }
    var q = new URLSearchParams(h.slice(9));
    var view = q.has("from") ? {from: Number(q.get("from")), to: Number(q.get("to"))} : null;
    explore(q.get("c"), q.get("s") || "all", view);
    document.getElementById("explorer").scrollIntoView();
  }
  window.addEventListener("hashchange", fromHash);
  document.querySelectorAll("button.explore").forEach(function (b) {
    b.addEventListener("click", function () {
      explore(b.dataset.cid, b.dataset.segment || "all");
      document.getElementById("explorer").scrollIntoView();
    });
  });
  fromHash();
  document.body.dataset.ready = "1";
})();
