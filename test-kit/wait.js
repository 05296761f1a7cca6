// Waiting: a pause, a deadline on a promise, and polling until a condition holds.
'use strict';

const DEFAULT_TIMEOUT = 5000;

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `promise` with a deadline; rejects with a message naming what was awaited. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check()` until it returns a truthy value; fails loudly with `what` after `ms`. */
async function waitUntil(check, what, ms = DEFAULT_TIMEOUT, every = 20) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting until ${what}`);
    await delay(every);
  }
}

/**
 * Resolves with what `test()` returns once it returns something (not undefined), trying now and
 * each time a function in `waiters` is called (whoever owns the set calls them all when its state
 * changes); rejects when `test` throws, or after `ms` with the message `timeoutMessage()`.
 */
function whenNotified(waiters, test, ms, timeoutMessage) {
  return new Promise((resolve, reject) => {
    const check = () => {
      let value;
      try {
        value = test();
      } catch (err) {
        done();
        reject(err);
        return;
      }
      if (value !== undefined) {
        done();
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(timeoutMessage()));
    }, ms);
    const done = () => {
      clearTimeout(timer);
      waiters.delete(check);
    };
    waiters.add(check);
    check();
  });
}

module.exports = { DEFAULT_TIMEOUT, delay, withTimeout, waitUntil, whenNotified };
