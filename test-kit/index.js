// The test kit shared by __test__/ and bench/: free ports, child processes, a private
// redis-server, JWT signing and waiting. Not part of the published package.
'use strict';

module.exports = {
  ...require('./wait'),
  ...require('./ports'),
  ...require('./proc'),
  ...require('./redis'),
  ...require('./jwt'),
};
