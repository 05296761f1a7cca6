'use strict';
function summarize() { return []; }
function chartSvg() { return '<svg xmlns="http://www.w3.org/2000/svg"/>'; }
function markdown() { return ''; }
function textTable(doc) { return JSON.stringify(doc.results, null, 1).slice(0, 6000); }
module.exports = { summarize, chartSvg, markdown, textTable };
